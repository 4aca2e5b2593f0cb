/**
 * `deno task parity`: every fixture × (prefetch on/off) × (cache on/off) against the stored
 * transformers outputs. Prints a table; exits 1 when any row fails.
 */
import {
  formatTable,
  loadFixtures,
  MODES,
  type ParityResult,
  runParity,
} from "../tests/parity_lib.ts";

const rows: ParityResult[] = [];
for (const f of await loadFixtures()) {
  for (const mode of MODES) rows.push(await runParity(f, mode));
}
console.log(formatTable(rows));
const failed = rows.filter((r) => !r.ok);
for (const r of failed) {
  if (!r.greedyEqual) console.log(`${r.fixture}: greedy ours ${r.ours} expected ${r.expected}`);
}
console.log(`parity: ${rows.length - failed.length} passed, ${failed.length} failed`);
if (failed.length > 0) Deno.exit(1);
