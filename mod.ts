/**
 * rabbitllm — run Hugging Face causal LMs larger than device memory by streaming decoder layers
 * through a native backend, one layer at a time.
 *
 * @example
 * ```ts ignore
 * import { AutoModel } from "jsr:@rabbitllm/rabbitllm";
 * await using model = await AutoModel.fromPretrained("models/stories260k", { device: "cpu" });
 * const ids = await model.generate([[1]], { maxNewTokens: 32 });
 * ```
 *
 * @module
 */
export {
  type AttnImplementation,
  AutoModel,
  type FromPretrainedOptions,
  isFlashAttentionAvailable,
} from "./lib/auto_model.ts";
export {
  CausalLM,
  type ForwardOptions,
  type Logits,
  type StreamChunk,
} from "./lib/engine/causal_lm.ts";
export type {
  ChatMessage,
  GenerateInput,
  GenerateOptions,
  GenerationDefaults,
  TextCodec,
} from "./lib/engine/generate.ts";
export type { SamplingOptions } from "./lib/engine/sampling.ts";
export { type RabbitServer, serve, type ServeOptions, type ServeStats } from "./lib/serve.ts";
export type { BlockDType } from "./lib/quant.ts";
export { type ProfileCategory, type ProfileEntry, Profiler } from "./lib/profiler.ts";
export type { TraceEvent } from "./lib/engine/store.ts";
export {
  type Bandwidths,
  type Plan,
  plan,
  type PlanInput,
  type PlanLayer,
  predictSecondsPerToken,
  type Tier,
} from "./lib/engine/planner.ts";
export {
  type CgroupLevel,
  type FileReader,
  type MemoryLimits,
  readMemoryLimits,
} from "./lib/memory.ts";
export type { CacheLayout, ModelConfig, RopeConfig, StorageDType } from "./lib/config.ts";
export { SUPPORTED_ARCHITECTURES } from "./lib/models/registry.ts";
export {
  type Activation,
  type AttentionArgs,
  Backend,
  type BackendStats,
  type DeviceKind,
  type DevPtr,
  type TensorView,
  type WeightDType,
} from "./ffi/backend.ts";
export {
  BackendError,
  CheckpointError,
  ConfigError,
  DeviceMemoryError,
  GgufError,
  HubError,
  type HubErrorKind,
  InputError,
  InternalError,
  MemoryLimitError,
  ModelClosedError,
  NonFiniteError,
  QueueFullError,
  RabbitError,
  SafetensorsError,
  TokenizerError,
  UnsupportedArchitectureError,
} from "./lib/errors.ts";
