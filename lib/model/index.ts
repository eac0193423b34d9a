/**
 * A model folder's life in one place: finding and checking its components, `prepare` and its versioned manifest,
 * the prepared sets (one per image size) and when they are stale, where they are written, and which image sizes a
 * UNet can run. Every failure is a DivbindError (lib/errors.ts) naming the file and the fix.
 */
export { besideModelDir, cacheDirFor, cacheRoot, preparedRoots } from './cache';
export {
  ADDED_CONDITIONS,
  checkComponentsAgree,
  checkSdxlTextEncoder,
  checkTextEncoder,
  checkUnet,
  checkUnetFamily,
  checkVaeDecoder,
  loadModelFile,
  openComponent,
  openModelFile,
  openScheduler,
  openTokenizer,
  openTokenizer2,
  restoreFix,
  tensors,
} from './components';
export { FAMILY_NAMES, detectFamily, familyGenerateDefaults, familyResolutions, familyTraits, readDeclaredDivbind, sdxlTimeIds } from './family';
export type { DeclaredDivbind, FamilyEvidence, FamilyName, FamilyTraits, ModelFamily } from './family';
export type { ModelFile, TextEncoderIo, UnetIo, VaeDecoderIo } from './components';
export {
  COMPONENT_FILES,
  DEFAULT_VAE_SCALE_FACTOR,
  DEFAULT_VAE_SCALING_FACTOR,
  LAYOUT_HINT,
  readModelFolder,
  readUnetFolder,
  relativeName,
} from './folder';
export type { ComponentName, ModelFolder, UnetFolder } from './folder';
export { openGuidedGraphs } from './guided-graphs';
export type { GuidedGraphs } from './guided-graphs';
export { MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, readManifest, withChecksum, writeManifest } from './manifest';
export type { ExternalDataMethod, GraphStamp, Manifest, ManifestRead, ManifestTensor } from './manifest';
export { ensurePrepared, prepareModel } from './prepare';
export type { EnsurePreparedOptions, PrepareOptions, PrepareProgress, PrepareResult, PrepareStage } from './prepare';
export {
  inspectPrepared,
  listPrepared,
  locatePrepared,
  prepareCommand,
  sizeDirName,
  sourceIdentity,
} from './prepared';
export type {
  ListedSet,
  PrepareCommandOptions,
  PreparedInfo,
  PreparedKey,
  PreparedState,
  PreparedUnetFiles,
  SourceIdentity,
} from './prepared';
export { DEFAULT_LATENT_SIDE, MAX_IMAGE_SIDE, defaultImageSize, formatSize, latentSize, resolveImageSize, sizeRule } from './size';
export type { ImageSize, SizeRule } from './size';
