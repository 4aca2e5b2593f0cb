/**
 * rl_read_sysfile (cpu/sysfile.c, through Backend.readSysfile): the kernel files the planner and the
 * huge-page notice read, and nothing outside its whitelist.
 */
import assert from "node:assert/strict";
import { Backend } from "../ffi/backend.ts";
import { hugePagesOff } from "../lib/auto_model.ts";

const THP = "/sys/kernel/mm/transparent_hugepage/enabled";

Deno.test("readSysfile: whitelisted kernel files read as they are; anything else is null", () => {
  const be = Backend.open({ device: "cpu" });
  try {
    assert.match(be.readSysfile("/proc/meminfo") ?? "", /^MemTotal:/);
    // Deno reads /sys only with --allow-all: the reference comes from cat.
    const cat = new Deno.Command("sh", { args: ["-c", `cat ${THP} 2>/dev/null`] }).outputSync();
    const thp = cat.success ? new TextDecoder().decode(cat.stdout) : null; // null: no THP here
    assert.equal(be.readSysfile(THP), thp);
    for (
      const p of [
        "/etc/passwd",
        "/sys/kernel/mm/transparent_hugepage/defrag",
        "/sys/fs/cgroup/../../etc/passwd",
        "/proc/self/environ",
      ]
    ) assert.equal(be.readSysfile(p), null, p);
  } finally {
    be.close();
  }
});

Deno.test("hugePagesOff: only the mode 'never' is off", () => {
  assert.equal(hugePagesOff("always [madvise] never\n"), false);
  assert.equal(hugePagesOff("[always] madvise never\n"), false);
  assert.equal(hugePagesOff("always madvise [never]\n"), true);
  assert.equal(hugePagesOff(null), false);
});
