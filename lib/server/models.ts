/**
 * The configured models, loaded once per process (DivBindPipeline.load) and shared by every job: onnxruntime
 * sessions take concurrent runs, and each generate() keeps its own scheduler state.
 */
import { DivBindPipeline } from '../index';
import type { ModelConfig } from './config';

export interface LoadModelsOptions {
  threads?: number;
  prepare?: boolean;
  log(message: string): void;
}

/** Loads every model (in order; a failure releases those loaded and rethrows). */
export async function loadModels(models: ModelConfig[], options: LoadModelsOptions): Promise<Map<string, DivBindPipeline>> {
  const loaded = new Map<string, DivBindPipeline>();
  try {
    for (const model of models) {
      options.log(`loading model ${model.name} (${model.dir})`);
      // The default model gets the library's defaults too (it prepares itself on first use).
      const pipeline = await DivBindPipeline.load(model.isDefault ? undefined : model.dir, {
        ...(options.threads !== undefined ? { session: { intraOpNumThreads: options.threads } } : {}),
        ...(options.prepare !== undefined ? { prepare: options.prepare } : {}),
        onProgress: (message) => options.log(`  ${model.name}: ${message}`),
      });
      loaded.set(model.name, pipeline);
      options.log(`model ${model.name} ready${pipeline.canGuide ? '' : ' (not prepared: mode none only; run `divbind-native prepare`)'}`);
    }
  } catch (err) {
    await releaseModels(loaded);
    throw err;
  }
  return loaded;
}

export async function releaseModels(pipelines: ReadonlyMap<string, DivBindPipeline>): Promise<void> {
  await Promise.allSettled([...pipelines.values()].map((p) => p.release()));
}
