/**
 * ONNX tooling: protobuf I/O over the vendored onnx.proto, model files with external data, static shapes through
 * onnxruntime, cross-attention discovery and instrumentation, and `prepare` (which also builds the VJP graphs of
 * ./vjp).
 */
export * from './proto';
export {
  KNOWN_EXTERNAL_DATA_NAMES,
  createSession,
  createSessionFromModel,
  externalDataReferences,
  loadModel,
  saveModel,
} from './model-io';
export type {
  CreateSessionExtras,
  ExternalDataFile,
  ExternalDataMethod,
  LoadedModel,
  SaveModelOptions,
  SavedExternalData,
  SavedModel,
} from './model-io';
export {
  cloneModelShallow,
  copyGraphFields,
  formatShape,
  inferStaticShapes,
  realGraphInputs,
  resolveInputDims,
  valueInfosFromShapes,
  withFixedInputDims,
} from './shapes';
export type { InferShapesOptions, ShapeMap, StaticShape } from './shapes';
export {
  DEFAULT_HEAD_AVERAGE,
  SUPPORTED_EXPORTS_HINT,
  assertUnfusedExport,
  describeLayer,
  findCrossAttention,
  instrumentUnet,
} from './attention';
export type {
  AttentionLayout,
  AttentionPattern,
  AttentionPlace,
  CrossAttentionLayer,
  FindAttentionOptions,
  InstrumentOptions,
  InstrumentResult,
  ManifestLayer,
} from './attention';
export { MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, readManifest, writeManifest } from './manifest';
export type { Manifest, ManifestTensor } from './manifest';
export { ModelError, cacheDirFor, locatePrepared, prepareModel, validateModelDir } from './prepare';
export type { LocatePreparedOptions, PrepareOptions, PrepareProgress, PrepareResult, PrepareStage } from './prepare';
