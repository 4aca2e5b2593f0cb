/**
 * A child process for tests/split_faults_test.ts: splits `<src>` into `<out>` (bfloat16) and prints
 * `start` before, then `{"reused":…,"ms":…}`. `KILL_AT=N` makes it SIGKILL itself at the Nth
 * progress call (after the Nth tensor is written); `verify` reads every part back and checks its
 * data against the manifest's sha256 (a load of the split).
 *
 * deno run --allow-read --allow-write --allow-env=KILL_AT --allow-run tests/split_child.ts SRC OUT [verify]
 *
 * @module
 */
import { createHash } from "node:crypto";
import { splitCheckpoint } from "../lib/checkpoint.ts";
import { readConfigJson } from "../lib/config.ts";
import { familyFor } from "../lib/models/registry.ts";

const [src, out, mode] = Deno.args;
const killAt = Number(Deno.env.get("KILL_AT") ?? "0");
const raw = await readConfigJson(src);
const family = familyFor((raw.architectures as string[])[0], src);
const cfg = family.parseConfig(raw, src);
let calls = 0;
console.log("start");
const t0 = performance.now();
const s = await splitCheckpoint(src, family, cfg, {
  dtype: "bfloat16",
  layerShardsSavingPath: out,
  onProgress: () => {
    if (++calls === killAt) Deno.kill(Deno.pid, "SIGKILL");
  },
});
const ms = performance.now() - t0;
if (mode === "verify") {
  for (const p of s.manifest.parts) {
    const bytes = await Deno.readFile(`${s.dir}/${p.file}`);
    const sha = createHash("sha256").update(bytes.subarray(p.dataOffset)).digest("hex");
    if (bytes.length !== p.bytes || sha !== p.sha256) {
      console.error(`${p.file}: does not match the manifest`);
      Deno.exit(1);
    }
  }
}
console.log(JSON.stringify({ reused: s.reused, ms }));
