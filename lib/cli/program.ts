/**
 * The `divbind-native` command line, assembled: each command lives in lib/cli/commands/<name>.ts and exports a
 * make<Name>Command() factory. lib/cli/index.ts starts it.
 */
import { Command, type CommanderError } from 'commander';
import { makeGenerateCommand } from './commands/generate';
import { makeEvalCommand } from './commands/eval';
import { makeInfoCommand } from './commands/info';
import { makePrepareCommand } from './commands/prepare';
import { makeTokensCommand } from './commands/tokens';
import { makeServeCommand } from './commands/serve';
import { makeWorkerCommand } from './commands/worker';
import { handleCliError } from './errors';
import { EXIT } from './exit-codes';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const pkg = require('../../../package.json') as { version: string };

/** commander's own usage errors exit 2, like most CLIs; --help and --version exit 0. */
function exitOnUsageError(err: CommanderError): never {
  if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') {
    process.exit(EXIT.OK);
  }
  process.exit(EXIT.USAGE);
}

export function makeProgram(): Command {
  const program = new Command('divbind-native')
    .description('Divide & Bind / Attend-and-Excite guided Stable Diffusion on onnxruntime-node')
    .version(pkg.version)
    .showHelpAfterError()
    .exitOverride(exitOnUsageError);
  for (const command of [
    makeGenerateCommand(),
    makeTokensCommand(),
    makePrepareCommand(),
    makeInfoCommand(),
    makeEvalCommand(),
    makeServeCommand(),
    makeWorkerCommand(),
  ]) {
    // addCommand() does not pass settings down to the subcommand, so set them on each.
    program.addCommand(command.exitOverride(exitOnUsageError).showHelpAfterError());
  }
  return program;
}

/** Runs the command line on process.argv, with the CLI's signal handling. */
export function runCli(): void {
  const onSignal = (signal: NodeJS.Signals) => {
    process.stderr.write(`\ninterrupted (${signal})\n`);
    process.exit(EXIT.INTERRUPTED);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  makeProgram().parseAsync(process.argv).catch(handleCliError);
}
