#!/usr/bin/env node
/**
 * The `divbind-native` executable. It first restarts itself with huge pages for malloc where that helps
 * (lib/pipeline/huge-pages.ts), before the commands and onnxruntime are loaded, so a restart costs only Node's start;
 * the commands are assembled in lib/cli/program.ts.
 */
import { relaunchWithHugePages } from '../pipeline/huge-pages';

if (require.main === module) {
  relaunchWithHugePages(); // returns only when the process did not restart
  (require('./program') as typeof import('./program')).runCli();
}
