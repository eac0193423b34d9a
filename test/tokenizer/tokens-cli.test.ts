/** `divbind-native tokens`: the table and suggestion it prints (text and --json), on the tiny model's tokenizer. */
import test from 'ava';
import * as path from 'node:path';
import { formatTokensReport, makeTokensCommand, tokensReport } from '../../lib/cli/commands/tokens';
import { CliError, EXIT } from '../../lib/cli/exit-codes';

const ROOT = path.resolve(__dirname, '../../..');
const MODEL = path.join(ROOT, 'test', 'fixtures', 'models', 'tiny-sd');

async function run(args: string[]): Promise<string> {
  const chunks: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((s: string | Uint8Array) => {
    chunks.push(String(s));
    return true;
  }) as typeof process.stdout.write;
  try {
    await makeTokensCommand()
      .exitOverride()
      .parseAsync(['node', 'tokens', ...args], { from: 'node' });
  } finally {
    process.stdout.write = write;
  }
  return chunks.join('');
}

test.serial('prints the index table and the suggested indices', async (t) => {
  const out = await run(['a purple dog and a green bench on the street,snowy driving scene', '--model', MODEL]);
  const lines = out.split('\n');
  t.is(lines[0].trim(), 'index  token            word');
  t.regex(out, /\n\s+0 {2}<\|startoftext\|>\s+\(sot\)\n/);
  t.regex(out, /\n\s+3 {2}dog<\/w>\s+dog\n/);
  t.regex(out, /\n\s+15 {2}<\|endoftext\|>\s+\(eot\)\n/);
  t.regex(out, /suggested objects: +dog=3 bench=7 +\(--token-indices 3,7\)/);
  t.regex(out, /suggested attributes: purple=2 green=6 +\(--attribute-indices 2,6\)/);
});

test.serial('--json gives the table, length and suggestion; --padding lists up to 77', async (t) => {
  const report = JSON.parse(await run(['a cat and a dog', '--model', MODEL, '--json', '--padding'])) as ReturnType<typeof tokensReport>;
  t.is(report.length, 7);
  t.is(report.maxLength, 77);
  t.false(report.truncated);
  t.is(report.table.length, 77);
  t.deepEqual(
    report.table.slice(1, 6).map((r) => [r.index, r.word]),
    [
      [1, 'a'],
      [2, 'cat'],
      [3, 'and'],
      [4, 'a'],
      [5, 'dog'],
    ],
  );
  t.deepEqual(report.suggestion && 'tokenIndices' in report.suggestion ? report.suggestion.tokenIndices : null, [2, 5]);
  const noSuggest = JSON.parse(await run(['a cat', '--model', MODEL, '--json', '--no-suggest'])) as ReturnType<typeof tokensReport>;
  t.is(noSuggest.suggestion, null);
});

test('a missing model is a model error (exit code 4) that names --model', (t) => {
  const err = t.throws(() => tokensReport('a cat', path.join(ROOT, 'missing-model')), { instanceOf: CliError });
  t.is(err!.exitCode, EXIT.MODEL);
  t.regex(err!.message, /pass --model <dir>/);
});

test('long prompts warn about truncation; prompts without nouns say so', (t) => {
  const long = tokensReport(Array.from({ length: 90 }, () => 'cat').join(' '), MODEL);
  t.true(long.truncated);
  t.regex(formatTokensReport(long), /longer than 75 tokens/);
  t.regex(formatTokensReport(tokensReport('very quickly', MODEL)), /automatic selection: No object noun found/);
});
