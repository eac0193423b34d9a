/**
 * `divbind-native tokens "<prompt>"`: the token index table (index from SOT = 0, BPE piece, word) that users pick
 * --token-indices / --attribute-indices from, plus the automatic object/attribute suggestion.
 */
import { Command } from 'commander';
import { defaultModelDir } from '../../pipeline/defaults';
import { formatTokenTable, selectTokens, tokenTable, type TokenSelection, type TokenTableRow } from '../../pipeline/token-selection';
import { ClipTokenizer } from '../../tokenizer/clip';
import { handleCliError } from '../errors';
import { CliError, EXIT } from '../exit-codes';

interface TokensCliOptions {
  model?: string;
  json: boolean;
  padding: boolean;
  suggest: boolean;
}

export interface TokensReport {
  prompt: string;
  model: string;
  /** Real tokens including SOT and EOT. */
  length: number;
  maxLength: number;
  truncated: boolean;
  table: TokenTableRow[];
  /** Automatic choice, or the reason there is none. */
  suggestion: Pick<TokenSelection, 'tokenIndices' | 'attributeIndices' | 'choices'> | { error: string } | null;
}

/** Builds what the command prints (exported for the API and tests). */
export function tokensReport(prompt: string, modelDir: string, options: { padding?: boolean; suggest?: boolean } = {}): TokensReport {
  let tokenizer: ClipTokenizer;
  try {
    tokenizer = ClipTokenizer.fromDirectory(modelDir);
  } catch (err) {
    throw new CliError(`${(err as Error).message} (model: ${modelDir}; pass --model <dir>)`, EXIT.MODEL);
  }
  const enc = tokenizer.encode(prompt);
  let suggestion: TokensReport['suggestion'] = null;
  if (options.suggest ?? true) {
    try {
      const s = selectTokens(tokenizer, prompt);
      suggestion = { tokenIndices: s.tokenIndices, attributeIndices: s.attributeIndices, choices: s.choices };
    } catch (err) {
      suggestion = { error: (err as Error).message.split('\n')[0] };
    }
  }
  return {
    prompt,
    model: modelDir,
    length: enc.length,
    maxLength: tokenizer.maxLength,
    truncated: enc.truncated,
    table: tokenTable(tokenizer, prompt, { padding: options.padding ?? false }),
    suggestion,
  };
}

/** Human-readable rendering of a report. */
export function formatTokensReport(r: TokensReport): string {
  const lines = [formatTokenTable(r.table)];
  if (r.truncated) lines.push(`\nwarning: the prompt is longer than ${r.maxLength - 2} tokens; the rest is cut off`);
  if (r.suggestion && 'error' in r.suggestion) {
    lines.push(`\nautomatic selection: ${r.suggestion.error}`);
  } else if (r.suggestion) {
    const s = r.suggestion;
    const describe = (role: 'object' | 'attribute') =>
      s.choices
        .filter((c) => c.role === role)
        .map((c) => `${c.word}=${c.index}`)
        .join(' ');
    lines.push('', `suggested objects:    ${describe('object')}   (--token-indices ${s.tokenIndices.join(',')})`);
    if (s.attributeIndices) {
      lines.push(`suggested attributes: ${describe('attribute')}   (--attribute-indices ${s.attributeIndices.map((a) => a ?? 0).join(',')})`);
    }
  }
  return lines.join('\n');
}

export function makeTokensCommand(): Command {
  return new Command('tokens')
    .description('show the token indices of a prompt (SOT = 0) to pick --token-indices / --attribute-indices from')
    .argument('<prompt>', 'the prompt')
    .option('-m, --model <dir>', 'Stable Diffusion model folder or its tokenizer/ folder (default: the bundled model)')
    .option('--json', 'print JSON', false)
    .option('--padding', 'also list the padding positions up to the maximum length', false)
    .option('--no-suggest', 'skip the automatic object/attribute suggestion')
    .action((prompt: string, o: TokensCliOptions) => {
      try {
        const report = tokensReport(prompt, o.model ?? defaultModelDir(), { padding: o.padding, suggest: o.suggest });
        process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatTokensReport(report)}\n`);
      } catch (err) {
        handleCliError(err);
      }
    });
}
