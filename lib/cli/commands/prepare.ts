/**
 * `divbind-native prepare <model-dir>`: builds the instrumented UNet, the VJP graph(s) and the manifest for a
 * Stable Diffusion ONNX folder and one image size (lib/model/prepare.ts). Exit codes (lib/cli/errors.ts): 0 done
 * (or already prepared), 3 bad option values or no writable output, 4 model missing/damaged/unsupported, 1 other.
 */
import { Command, InvalidArgumentError } from 'commander';
import { DivbindError } from '../../errors';
import { describeLayer } from '../../onnx/attention';
import { prepareModel, type PrepareProgress, type PrepareResult } from '../../model/prepare';
import { exitCodeFor, printCliError } from '../errors';
import { EXIT } from '../exit-codes';

function intOption(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`Expected a positive integer for --${name}.`);
    return n;
  };
}

interface PrepareCliOptions {
  height?: number;
  width?: number;
  batch?: number;
  textLength?: number;
  force?: boolean;
  cacheDir?: string;
  headAverage: boolean;
  design?: 'recompute' | 'residuals';
  verify: boolean;
  json?: boolean;
}

/** Progress on stderr: one rewritten line on a TTY, one line per stage otherwise. */
function progressPrinter(stream: NodeJS.WriteStream): (p: PrepareProgress) => void {
  const tty = stream.isTTY === true;
  return (p) => {
    const pct = `${Math.round(p.fraction * 100)}`.padStart(3);
    const line = `[${pct}%] ${p.stage}: ${p.message}`;
    if (tty) stream.write(`\r\x1b[2K${line}${p.stage === 'done' ? '\n' : ''}`);
    else stream.write(`${line}\n`);
  };
}

function summary(r: PrepareResult): string {
  const m = r.manifest;
  const lines = [
    `${r.skipped ? 'Already prepared' : 'Prepared'}: ${r.dir}`,
    `  model    ${m.source.modelDir} (${m.source.unet}, opset ${m.source.opset}, sha256 ${m.source.sha256.slice(0, 12)}…)`,
    `  size     ${m.width}×${m.height} px, batch ${m.batch}, text length ${m.textLength}`,
    `  graphs   ${[m.files.unet, m.files.vjp, m.files.forward, m.files.backward].filter(Boolean).join(', ')} (VJP design ${m.vjp.design})`,
    `  layers   ${m.attention.layers.length} cross-attention maps${m.attention.headAveraged ? ', head-averaged' : ''}:`,
    ...m.attention.layers.map((l) => `    ${describeLayer(l)}`),
  ];
  return `${lines.join('\n')}\n`;
}

export function makePrepareCommand(): Command {
  return new Command('prepare')
    .description('Build the attention-instrumented UNet and its VJP graph for a Stable Diffusion ONNX folder (once per model and size)')
    .argument('<model-dir>', 'Stable Diffusion ONNX folder (model_index.json, unet/model.onnx, …)')
    .option(
      '--height <px>',
      "image height in pixels, a multiple of the VAE factor (default: the UNet's static size, else the model family's default size)",
      intOption('height'),
    )
    .option('--width <px>', "image width in pixels (default: the UNet's static width, else as --height)", intOption('width'))
    .option('--batch <n>', 'UNet batch of the gradient pass', intOption('batch'), 1)
    .option('--text-length <n>', "text length T (default: the UNet's, else 77)", intOption('text-length'))
    .option('--force', 'rebuild even when a ready set with the same options exists')
    .option('--cache-dir <dir>', 'where to write when the model folder is read-only (default $XDG_CACHE_HOME or ~/.cache, /divbind-native)')
    .option('--no-head-average', 'expose raw per-head attention probabilities (default: head-averaged maps when every layer has the same head count)')
    .option('--design <design>', 'VJP graph design: recompute (one graph) or residuals (forward + backward)')
    .option('--no-verify', 'skip the check run of the written graphs')
    .option('--json', 'print the manifest as JSON on stdout (progress stays on stderr)')
    .action(async (modelDir: string, o: PrepareCliOptions) => {
      try {
        if (o.design !== undefined && o.design !== 'recompute' && o.design !== 'residuals') {
          throw new DivbindError('BAD_INPUT', `Expected 'recompute' or 'residuals' for --design but received '${o.design}'`, { field: 'design' });
        }
        const result = await prepareModel(modelDir, {
          ...(o.height !== undefined ? { height: o.height } : {}),
          ...(o.width !== undefined ? { width: o.width } : {}),
          ...(o.batch !== undefined ? { batch: o.batch } : {}),
          ...(o.textLength !== undefined ? { textLength: o.textLength } : {}),
          ...(o.cacheDir !== undefined ? { cacheDir: o.cacheDir } : {}),
          ...(o.design !== undefined ? { design: o.design } : {}),
          force: o.force === true,
          // --no-head-average forces raw maps; without it prepare averages heads where that is exact.
          ...(o.headAverage === false ? { headAverage: false } : {}),
          verify: o.verify,
          onProgress: progressPrinter(process.stderr),
        });
        if (o.json) process.stdout.write(`${JSON.stringify({ dir: result.dir, skipped: result.skipped, manifest: result.manifest }, null, 2)}\n`);
        else process.stdout.write(summary(result));
        process.exitCode = EXIT.OK;
      } catch (err) {
        const exitCode = exitCodeFor(err);
        if (o.json) {
          const e = err instanceof Error ? err : new Error(String(err));
          const code = err instanceof DivbindError ? { code: err.code, ...(err.field !== undefined ? { field: err.field } : {}) } : {};
          process.stdout.write(`${JSON.stringify({ error: { name: e.name, message: e.message, ...code, exitCode } })}\n`);
        }
        printCliError(err);
        process.exitCode = exitCode;
      }
    });
}
