/**
 * The generate options on the command line: commander flags from the definitions (help text with the default),
 * and the flags' strings back into GenerateOptions, each parsed strictly by its option's kind. Flags carry no
 * commander defaults: an omitted flag is an omitted option, so the plan applies the one default.
 */
import { Option, type Command } from 'commander';
import { GENERATE_OPTION_NAMES, definitionOf, type GenerateOptions, type OptionDefinition } from './definitions';
import { knownExecutionProviders } from '../pipeline/ort';
import { integer, oneOf, type Kind } from './kinds';

/** onnxruntime intra-op threads (a load option, shared by the commands that load a model). */
export const THREADS: Kind<number> = integer(1, 1024, 'pass the number of CPU threads onnxruntime may use, e.g. 2');

/**
 * The --execution-provider flag (a load option, LoadOptions.executionProvider): one of the providers this
 * onnxruntime-node knows; whether it is installed is checked when the model loads (lib/pipeline/ort.ts).
 */
export const EXECUTION_PROVIDER = {
  flags: '--execution-provider <name>',
  doc: `onnxruntime execution provider: ${knownExecutionProviders()
    .map((p) => p.name)
    .join(', ')} (default cpu; cuda and tensorrt need onnxruntime-node installed with --onnxruntime-node-install=cuda12)`,
  kind: oneOf(knownExecutionProviders().map((p) => p.name)),
} as const;

function renderDefault(value: unknown): string {
  if (value === '') return '""';
  if (Array.isArray(value)) return value.join(',');
  return String(value);
}

function helpText(def: OptionDefinition): string {
  if (def.default !== undefined) return `${def.doc} (default: ${renderDefault(def.default)})`;
  if (def.defaultFrom !== undefined) return `${def.doc} (default: ${def.defaultFrom})`;
  return def.doc;
}

/** Adds the `<prompt>` argument and one flag per generate option (or its group of flags) to `command`. */
export function addGenerateFlags(command: Command): Command {
  for (const name of GENERATE_OPTION_NAMES) {
    const def = definitionOf(name);
    if (def.cli === undefined) continue;
    if (typeof def.cli !== 'string') {
      for (const f of def.cli.flags) command.addOption(new Option(f.flags, f.doc));
    } else if (def.cli.startsWith('<')) {
      command.argument(def.cli, helpText(def));
    } else {
      command.addOption(new Option(def.cli, helpText(def)));
    }
  }
  return command;
}

/**
 * The generate options from commander's parsed flags (strings). Throws a DivbindError 'BAD_INPUT' naming the
 * flag for text that is not a valid value ("--seed abc", "--token-indices 3,,7", "--thresholds null").
 */
export function generateOptionsFromFlags(prompt: string, flags: Record<string, unknown>): GenerateOptions {
  const strings = flags as Record<string, string | undefined>;
  const out: Record<string, unknown> = { prompt };
  for (const name of GENERATE_OPTION_NAMES) {
    const def = definitionOf(name);
    if (def.cli === undefined || (typeof def.cli === 'string' && def.cli.startsWith('<'))) continue;
    if (typeof def.cli !== 'string') {
      const value = def.cli.read(strings);
      if (value !== undefined) out[name] = value;
      continue;
    }
    const flag = new Option(def.cli);
    const text = strings[flag.attributeName()];
    if (text === undefined) continue;
    if (!def.kind.parse) throw new Error(`option ${name} has a flag but its kind cannot parse text`);
    out[name] = def.kind.parse(text, flag.long ?? name);
  }
  return out as GenerateOptions;
}
