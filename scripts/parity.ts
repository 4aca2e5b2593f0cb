/**
 * `deno task parity [--device cuda] [--only NAME]...`: every fixture (or the named ones) × (prefetch on/off) × (cache on/off) against
 * the stored transformers outputs — on CUDA also × (flash/eager attention) and a run with
 * synchronous copies. Prints a table; exits 1 when any row fails.
 */
import { parseArgs } from "node:util";
import {
  formatTable,
  loadFixtures,
  type Mode,
  MODES,
  type ParityResult,
  runParity,
} from "../tests/parity_lib.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { device: { type: "string", default: "cpu" }, only: { type: "string", multiple: true } },
});
const device = values.device as "cpu" | "cuda";
if (device !== "cpu" && device !== "cuda") {
  console.error(`--device: expected cpu or cuda, got ${device}`);
  Deno.exit(2);
}
const modes: Mode[] = device === "cpu" ? [...MODES] : [
  ...MODES.flatMap((m) => [
    { ...m, device, attnImplementation: "flash" as const },
    { ...m, device, attnImplementation: "eager" as const },
  ]),
  { prefetching: true, useCache: true, device, attnImplementation: "flash", asyncCopy: false },
];

const rows: ParityResult[] = [];
const only = values.only ?? [];
const fixtures = (await loadFixtures()).filter((f) => only.length === 0 || only.includes(f.name));
if (fixtures.length === 0) {
  console.error(`--only: no fixture named ${only.join(", ")}`);
  Deno.exit(2);
}
for (const f of fixtures) {
  for (const mode of modes) rows.push(await runParity(f, mode));
}
console.log(formatTable(rows));
const failed = rows.filter((r) => !r.ok);
for (const r of failed) {
  if (!r.greedyEqual) console.log(`${r.fixture}: greedy ours ${r.ours} expected ${r.expected}`);
}
console.log(`parity: ${rows.length - failed.length} passed, ${failed.length} failed`);
if (failed.length > 0) Deno.exit(1);
