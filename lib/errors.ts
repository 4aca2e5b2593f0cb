/**
 * Typed errors. Every error names the file, tensor or key it is about and what was expected.
 *
 * @module
 */

/** Base class of every error thrown by rabbitllm. */
export class RabbitError extends Error {
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

/** config.json is missing a needed key or holds a value we cannot use. */
export class ConfigError extends RabbitError {
  readonly file: string;
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
  constructor(readonly architecture: string, readonly supported: readonly string[], file: string) {
    super(
      `${file}: architecture ${architecture} is not supported; supported: ${supported.join(", ")}`,
    );
  }
}

/** A checkpoint (directory, index, shard or split) is missing, incomplete or inconsistent. */
export class CheckpointError extends RabbitError {
  constructor(readonly path: string, what: string, options?: { cause?: unknown }) {
    super(`${path}: ${what}`, options);
  }
}

/** The native backend failed to load, or an op returned a non-zero status. */
export class BackendError extends RabbitError {
  constructor(
    readonly op: string,
    what: string,
    options?: { cause?: unknown },
    readonly status?: number,
  ) {
    super(`${op}: ${what}`, options);
  }
}

/** A request the engine cannot serve: bad input ids, sequence past maxSeqLen, closed model. */
export class InputError extends RabbitError {}
