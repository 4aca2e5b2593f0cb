/**
 * ALiBi (Press et al., "Train Short, Test Long"): attention without positional embeddings, where
 * each head h adds `slope[h] · j` to the score of key j. The slopes are the standard recipe, as
 * Baichuan-13B's and Baichuan2-13B's remote code (`_get_interleave`) and BLOOM compute them.
 *
 * The backend adds the bias in its relative form (`rl_attention_alibi`, ffi/rabbitllm.h):
 * `slope[h] · (j − pos)` for the query at cache index `pos`, after `score = (q·k) · scale`
 * (Baichuan-13B: `q·k / sqrt(head_dim)`, then `+ slope · j`). The two differ by `slope[h] · pos`,
 * a constant of the query's row that the softmax cancels; the relative form stays small where the
 * weight is (near the query) instead of growing with the sequence.
 *
 * @module
 */
import { InternalError } from "../errors.ts";

/**
 * The ALiBi slopes of `n` heads, one per head, rounded to f32 (as `torch.Tensor(slopes)` is):
 * for m = 2^floor(log2 n), the closest power of two <= n, the slopes of m heads are
 * 2^(−8k/m), k = 1..m; the n − m remaining heads take the odd ones of 2m heads,
 * 2^(−4(2k−1)/m), k = 1..n−m. Computed as the original does (`start · start^i` with
 * start = 2^(−8/m), in f64).
 */
export function alibiSlopes(n: number): Float32Array {
  if (!Number.isInteger(n) || n < 1) {
    throw new InternalError(
      `alibiSlopes: the number of heads must be a positive integer, got ${n}`,
    );
  }
  return Float32Array.from(slopes(n));
}

/** `_get_interleave(n)` in f64. */
function slopes(n: number): number[] {
  const powerOf2 = (m: number): number[] => {
    const start = 2 ** -(2 ** -(Math.log2(m) - 3)); // 2^(-8/m)
    return Array.from({ length: m }, (_, i) => start * start ** i);
  };
  let m = 1; // the closest power of two <= n
  while (m * 2 <= n) m *= 2;
  if (m === n) return powerOf2(n);
  return powerOf2(m).concat(slopes(2 * m).filter((_, i) => i % 2 === 0).slice(0, n - m));
}
