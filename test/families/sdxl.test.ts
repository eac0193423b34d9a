/**
 * SDXL (tiny-sdxl: two text encoders, text_embeds and time_ids, transformer depth 2, no attention at the top level,
 * 1024²) against its PyTorch goldens: golden-suite.ts.
 */
import { SDXL } from './fixtures';
import { registerGoldenSuite } from './golden-suite';

registerGoldenSuite(SDXL);
