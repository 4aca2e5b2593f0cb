/**
 * `hidden_act` names (transformers' ACT2FN) → the backend's activation; every family uses it.
 *
 * @module
 */
import type { Activation } from "../../ffi/backend.ts";

export const ACTIVATIONS: Readonly<Record<string, Activation>> = {
  silu: "silu",
  swish: "silu",
  gelu_pytorch_tanh: "gelu_tanh",
  gelu_new: "gelu_tanh",
  gelu: "gelu",
};
