/**
 * Typed errors. Every error names the file, tensor or key it is about and what was expected.
 *
 * @module
 */

/** Base class of every error thrown by rabbitllm. */
export class RabbitError extends Error {
  /** `name` is the subclass's name, so logs say which error it is. */
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A safetensors file (or one tensor in it) is malformed or does not match what was asked for. */
export class SafetensorsError extends RabbitError {
  /** The file the problem is in. */
  readonly file: string;
  /** The tensor the problem is about, when there is one. */
  readonly tensor?: string;

  /** Message: `"<file>: <tensor>: <what>"`, or `"<file>: <what>"` without a tensor. */
  constructor(
    file: string,
    tensor: string | undefined,
    what: string,
    options?: { cause?: unknown },
  ) {
    super(tensor === undefined ? `${file}: ${what}` : `${file}: ${tensor}: ${what}`, options);
    this.file = file;
    if (tensor !== undefined) this.tensor = tensor;
  }
}

/** A GGUF file is malformed, or holds what we cannot use: names the metadata key or tensor. */
export class GgufError extends RabbitError {
  /** The GGUF file. */
  readonly file: string;
  /** The metadata key or tensor the problem is about (`key <name>` / `tensor <name>`), if any. */
  readonly where?: string;

  /** Message: `"<file>: <where>: <what>"`, or `"<file>: <what>"`. */
  constructor(file: string, where: string | undefined, what: string) {
    super(where === undefined ? `${file}: ${what}` : `${file}: ${where}: ${what}`);
    this.file = file;
    if (where !== undefined) this.where = where;
  }
}

/** config.json is missing a needed key or holds a value we cannot use. */
export class ConfigError extends RabbitError {
  /** The config file (or GGUF file) the value comes from. */
  readonly file: string;
  /** The key at fault, null when the problem is the whole file. */
  readonly key: string | null;

  /** Message: `"<file>: <key>: <what>"`, or `"<file>: <what>"` without a key. */
  constructor(file: string, key: string | null, what: string, options?: { cause?: unknown }) {
    super(key === null ? `${file}: ${what}` : `${file}: ${key}: ${what}`, options);
    this.file = file;
    this.key = key;
  }
}

/** `config.architectures[0]` names a family we do not implement. */
export class UnsupportedArchitectureError extends RabbitError {
  /** Message: `"<file>: architecture <name> is not supported; supported: ..."`. */
  constructor(readonly architecture: string, readonly supported: readonly string[], file: string) {
    super(
      `${file}: architecture ${architecture} is not supported; supported: ${supported.join(", ")}`,
    );
  }
}

/** A checkpoint (directory, index, shard or split) is missing, incomplete or inconsistent. */
export class CheckpointError extends RabbitError {
  /** Message: `"<path>: <what>"`; `path` is the file or directory at fault. */
  constructor(readonly path: string, what: string, options?: { cause?: unknown }) {
    super(`${path}: ${what}`, options);
  }
}

/**
 * A PyTorch checkpoint (`pytorch_model.bin`, torch.save's zip format) is malformed, legacy, or its
 * pickle asks for something we do not allow (any global outside the torch.save whitelist).
 */
export class TorchBinError extends CheckpointError {
  /** The .bin file. */
  readonly file: string;
  /** The zip entry, pickle global or tensor the problem is about, when there is one. */
  readonly where?: string;

  /** Message: `"<file>: <where>: <what>"`, or `"<file>: <what>"`. */
  constructor(
    file: string,
    where: string | undefined,
    what: string,
    options?: { cause?: unknown },
  ) {
    super(file, where === undefined ? what : `${where}: ${what}`, options);
    this.file = file;
    if (where !== undefined) this.where = where;
  }
}

/** The native backend failed to load, or an op returned a non-zero status. */
export class BackendError extends RabbitError {
  /**
   * Message: `"<op>: <what>"`; `op` is the ABI function (or "load"), `status` its return code
   * (ffi/rabbitllm.h `RL_ERR_*`) when there is one.
   */
  constructor(
    readonly op: string,
    what: string,
    options?: { cause?: unknown },
    readonly status?: number,
  ) {
    // The native library's messages already start with "<op>: ".
    super(what.startsWith(`${op}: `) ? what : `${op}: ${what}`, options);
  }
}

/**
 * The device could not hold an allocation: `requested` bytes were asked for while `free` bytes
 * were free (null when the backend cannot tell) and `live` were held by this model's context.
 * Nothing half-done is kept: the model stays usable with a setting that needs less (a smaller
 * batch, `maxSeqLen`, `maxResidentBytes` or `maxGpuMemory`).
 */
export class DeviceMemoryError extends BackendError {
  /**
   * Message: `"rl_alloc: out of device memory: <requested> requested, <free> free, <live> held by
   * this model; ..."`; the backend's own message is the `cause`.
   */
  constructor(
    readonly requested: number,
    readonly free: number | null,
    readonly live: number,
    /** The backend's own message (rl_last_error), kept as `cause`. */
    backendMessage: string,
  ) {
    super(
      "rl_alloc",
      `out of device memory: ${mib(requested)} requested, ${
        free === null ? "free memory unknown" : `${mib(free)} free`
      }, ${mib(live)} held by this model; a smaller batch, maxSeqLen or maxResidentBytes ` +
        "needs less",
      { cause: backendMessage },
      2,
    );
  }
}

/**
 * The memory this process may use cannot hold even the smallest plan: the KV cache and
 * activations of the call, the always-resident embedding/norm/head (unless mapped from their file,
 * as the CPU backend does), and one streamed layer (the largest). Thrown by the memory planner before anything is allocated, at load or by a call whose
 * batch or length needs more, instead of an out-of-memory kill later; the model stays usable with
 * a setting that needs less.
 */
export class MemoryLimitError extends RabbitError {
  /**
   * Message: `"<host|device> memory: the model needs at least <needed> (...), <available> ..."`.
   * `needed` and `available` are bytes; `parts` splits `needed`.
   */
  constructor(
    /** Which memory is short: host RAM (the CPU backend, cgroup limits, `maxMemory`) or the GPU's. */
    readonly memory: "host" | "device",
    readonly needed: number,
    readonly available: number,
    /**
     * What `needed` is made of: KV cache and activations, embedding/norm/head (0 when they are
     * mapped file pages, which the kernel can reclaim), one streamed layer.
     */
    readonly parts: { work: number; small: number; layer: number },
  ) {
    super(
      `${memory} memory: the model needs at least ${mib(needed)} to run with every layer ` +
        `streamed (KV cache and activations ${mib(parts.work)}, ${
          parts.small > 0 ? `embedding/norm/head ${mib(parts.small)}, ` : ""
        }one streamed layer ${mib(parts.layer)}), but only ${mib(available)} ${
          memory === "host"
            ? "is left for this process (system, cgroup limit or maxMemory)"
            : "is free on the device (or allowed by maxGpuMemory)"
        }; a smaller maxSeqLen or batch, a compressed dtype (q8_0, q4_k) or more memory would fit`,
    );
  }
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB (${b} bytes)`;

/** The server's queue (lib/engine/batcher.ts) is full: try again later (HTTP 429). */
export class QueueFullError extends RabbitError {
  /** Message: `"the queue is full: <n> requests waiting"`. */
  constructor(readonly waiting: number) {
    super(`the queue is full: ${waiting} requests waiting`);
  }
}

/** A request the engine cannot serve: bad input ids, sequence past maxSeqLen, closed model. */
export class InputError extends RabbitError {}

/** A call on a model (or its weight store) after `close()`. */
export class ModelClosedError extends InputError {
  /** Message: `"<source>: the model was closed"`. */
  constructor(readonly source: string) {
    super(`${source}: the model was closed`);
  }
}

/** A broken invariant inside rabbitllm (a bug, not bad input): please report it. */
export class InternalError extends RabbitError {
  /** Message: `"internal: <what>"`. */
  constructor(what: string) {
    super(`internal: ${what}`);
  }
}

/** A forward pass produced NaN or ±Inf; names the first stage whose output went non-finite. */
export class NonFiniteError extends RabbitError {
  /** Message: `"<source>: the output of <stage> is not finite ..."`. */
  constructor(
    /** "embedding", "layer N", "final norm" or "lm_head". */
    readonly stage: string,
    /** The decoder layer index when the stage is a layer, else null. */
    readonly layer: number | null,
    source: string,
  ) {
    super(
      `${source}: the output of ${stage} is not finite (NaN or Inf); no tokens were produced from it`,
    );
  }
}

/** Why a Hugging Face hub download failed; see {@link HubError}. */
export type HubErrorKind =
  /** 401/403: the repo is gated or private and the token is missing or lacks access. */
  | "auth"
  /** 404, or a file the checkpoint needs is not in the repo. */
  | "not_found"
  /** The hub could not be reached, or a download kept failing after its retries. */
  | "network"
  /** The hub answered with another HTTP error. */
  | "http"
  /** A downloaded file does not have the size or hash the hub announced. */
  | "integrity"
  /** Offline mode is on and the cache lacks the revision or a file. */
  | "offline"
  /** The request itself is unusable: a malformed repo id or token, no cache directory. */
  | "invalid";

/**
 * A Hugging Face hub download failed. Names the repo, the revision and, when there is one, the
 * file; never contains the access token.
 */
export class HubError extends RabbitError {
  /** The file the problem is about, when there is one. */
  readonly file?: string;

  /** Message: `"<repo>@<revision>: <file>: <what>"`, or without the file. */
  constructor(
    readonly kind: HubErrorKind,
    readonly repoId: string,
    readonly revision: string,
    what: string,
    options?: { file?: string; cause?: unknown },
  ) {
    const file = options?.file;
    super(`${repoId}@${revision}: ${file === undefined ? "" : `${file}: `}${what}`, options);
    if (file !== undefined) this.file = file;
  }
}

/**
 * A tokenizer file (tokenizer.json, tokenizer_config.json, a chat template) is missing or unusable,
 * a chat template failed to render, or token ids are invalid.
 */
export class TokenizerError extends RabbitError {
  /** The file (or option) the problem is in. */
  readonly file: string;
  /** The key the problem is about, when there is one. */
  readonly key: string | null;

  /** Message: `"<file>: <key>: <what>"`, or `"<file>: <what>"` without a key. */
  constructor(file: string, key: string | null, what: string, options?: { cause?: unknown }) {
    super(key === null ? `${file}: ${what}` : `${file}: ${key}: ${what}`, options);
    this.file = file;
    this.key = key;
  }
}

/**
 * Deepest nesting of arrays and objects a JSON file we read may have (real config.json,
 * tokenizer.json and safetensors headers nest a few levels). Deeper values are refused with a typed
 * error when read, so no later step (an error message's JSON.stringify, a recursive walk) can run
 * out of stack on them.
 */
export const MAX_JSON_DEPTH = 64;

/** Whether a parsed JSON value nests arrays/objects deeper than `max` (iterative: any depth). */
export function jsonTooDeep(value: unknown, max: number = MAX_JSON_DEPTH): boolean {
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== "object" || v === null) continue;
    if (depth >= max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (typeof child === "object" && child !== null) stack.push([child, depth + 1]);
    }
  }
  return false;
}
