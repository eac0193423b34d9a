/**
 * Child process of the benchmark's worker pool (lib/eval/runner.ts): loads the pipeline once with the given
 * onnxruntime thread count, then runs the jobs the parent sends, one at a time, and returns the raw images.
 * Started by fork() with the WorkerInit as JSON in argv[2]; exits when the parent says stop or goes away.
 */
import { DivBindPipeline } from '../pipeline/pipeline';
import { runJob, toWire, type ParentMessage, type WorkerInit, type WorkerMessage } from './runner';

function send(m: WorkerMessage): Promise<void> {
  return new Promise((resolve) => process.send?.(m, undefined, {}, () => resolve()));
}

async function main(): Promise<void> {
  const init = JSON.parse(process.argv[2] ?? '{}') as WorkerInit;
  let pipe: DivBindPipeline;
  try {
    pipe = await DivBindPipeline.load(init.modelDir, {
      prepare: init.prepare,
      cacheDir: init.cacheDir,
      session: { intraOpNumThreads: init.threads },
      onProgress: (message) => void send({ type: 'note', message }),
    });
  } catch (err) {
    await send({ type: 'failed', error: toWire(err) });
    process.exit(1);
  }
  process.on('message', (m: ParentMessage) => {
    if (m.type === 'stop') {
      process.exit(0);
    }
    runJob(pipe, m.job).then(
      (result) => void send({ type: 'result', result }),
      (err: unknown) => void send({ type: 'failed', error: toWire(err) }),
    );
  });
  void send({ type: 'ready', canGuide: pipe.canGuide });
}

if (require.main === module) {
  if (!process.send) {
    process.stderr.write('lib/eval/worker.js is started by the eval command (lib/eval/runner.ts), not by hand\n');
    process.exit(2);
  }
  // The parent is gone (crash, Ctrl-C): nothing left to do.
  process.on('disconnect', () => process.exit(0));
  void main();
}
