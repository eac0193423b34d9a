/**
 * SD 2.x (tiny-sd2: linear proj_in/out, heads per level, OpenCLIP-style text encoder, pad "!", v-prediction,
 * 768²) against its PyTorch goldens: golden-suite.ts.
 */
import { SD2 } from './fixtures';
import { registerGoldenSuite } from './golden-suite';

registerGoldenSuite(SD2);
