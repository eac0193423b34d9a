/**
 * ONNX tooling: protobuf I/O over the vendored onnx.proto, model files with external data, static shapes through
 * onnxruntime, cross-attention discovery and instrumentation, and the VJP graphs of ./vjp. `prepare`, which puts
 * them together for a model folder, lives in lib/model.
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
