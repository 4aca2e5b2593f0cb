/**
 * `deno task bench`: the side-by-side table, every row measured in one run on this machine.
 *
 *   deno task bench [--model DIR|FILE.gguf | --shape smollm2-135m|llama3-8b|qwen3-30b-a3b]
 *                   [--dtype F32|F16|BF16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k] [--layers N]
 *                   [--device cpu|cuda]
 *                   [--prompt 64] [--new 64] [--batches 1,4,16] [--memory-limit 0.75]
 *                   [--limit-basis own|fp16] [--int8]
 *                   [--repeat 3] [--peers] [--no-hf] [--json FILE]
 *
 * CPU rows: ours with every layer resident; streamed from the page cache (maxResidentBytes 0);
 * under a memory limit of `--memory-limit` × the model's bytes (its split's own bytes, or with
 * `--limit-basis fp16` the fp16 model's: 2 bytes per parameter, the same limit whatever `--dtype`
 * says, so runs at different types compare under one limit) with default options (the engine
 * runs in a child cgroup, its files dropped from the page cache first); batches 1, 4, 16 resident
 * and under the limit; HF transformers; with `--peers`, llama.cpp (llama-cpp-python 0.3.36 built
 * from source with GGML_NATIVE into a cached venv, the checkpoint converted with the sdist's
 * convert_hf_to_gguf.py) resident and under the same limit. Bounds: memory read GB/s and
 * sequential disk read GB/s (page cache dropped), measured by build/bench_io. Every row runs in
 * its own process. Memory limits need root and cgroups (v1 or v2); without them the table says
 * so and leaves those rows out.
 *
 * `--int8`: our rows run with `int8Activations` (decode matmuls on q8_0 / q4_0 / q4_1 / q5_0 /
 * q5_1 / q4_k weights with int8 activations).
 *
 * A `.gguf` as `--model` runs as it is (its tensor types), and llama.cpp's peer rows read that
 * same file.
 *
 * GPU (`--device cuda`): resident, streamed from disk, and streamed from the pinned host tier,
 * against the measured pinned host→device bandwidth (build/bench_h2d).
 *
 * Default model: a synthetic checkpoint of SmolLM2-135M's shape (seeded random weights) in F32
 * (CPU) or Llama-3-8B's in BF16 (GPU).
 */
import { parseArgs } from "node:util";
import { openCheckpoint, splitWithProgress } from "../lib/auto_model.ts";
import { type BlockDType, QUANTIZABLE } from "../lib/quant.ts";
import { modelInfo } from "../lib/info.ts";
import { BENCH_LAYERS, makeBenchModel } from "./make_bench_model.ts";
import type { RowResult } from "./bench_run.ts";

const USAGE = `deno task bench [options]   (every row measured in this run; see BENCHMARKS.md)
  --model DIR|FILE.gguf     a checkpoint (default: a synthetic one of --shape)
  --shape NAME              smollm2-135m (CPU default), llama3-8b (GPU default), qwen3-30b-a3b
  --dtype T                 F32|F16|BF16, or a block format our split quantizes to:
                            q8_0|q4_0|q4_1|q5_0|q5_1|q4_k (llama.cpp peers: the same type)
  --layers N                cut the synthetic model to N decoder layers
  --device cpu|cuda         cuda: resident, streamed from disk and from pinned host memory
  --prompt 64 --new 64      prompt tokens and decoded tokens per row
  --batches 1,4,16          batch sizes
  --memory-limit 0.75       the memory-limit rows' limit, × the basis below (needs root, cgroups)
  --limit-basis own|fp16    own: the split's bytes; fp16: 2 bytes per parameter, whatever --dtype
  --int8                    our rows with int8 activations (decode on q8_0 q4_0 q4_1 q5_0 q5_1 q4_k)
  --repeat 3                runs per row (best kept)
  --peers                   llama.cpp rows (llama-cpp-python 0.3.36 built once, cached)
  --no-hf                   no transformers row
  --json FILE               the rows as JSON too`;

const parse = () =>
  parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean", short: "h", default: false },
      device: { type: "string", default: "cpu" },
      model: { type: "string" },
      shape: { type: "string" },
      dtype: { type: "string" },
      layers: { type: "string" },
      prompt: { type: "string", default: "64" },
      new: { type: "string", default: "64" },
      batches: { type: "string", default: "1,4,16" },
      "memory-limit": { type: "string", default: "0.75" },
      "limit-basis": { type: "string", default: "own" },
      int8: { type: "boolean", default: false },
      repeat: { type: "string", default: "3" },
      peers: { type: "boolean", default: false },
      "no-hf": { type: "boolean", default: false },
      json: { type: "string" },
    },
  });
let args: ReturnType<typeof parse>["values"];
try {
  args = parse().values;
} catch (e) {
  console.error(`bench: ${(e as Error).message}\n\n${USAGE}`);
  Deno.exit(2);
}
if (args.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const device = args.device as "cpu" | "cuda";
const promptLen = Number(args.prompt), newTokens = Number(args.new);
const batches = args.batches.split(",").map(Number);
const here = (p: string) => new URL(p, import.meta.url).pathname;
const tmp = here("../tests/.tmp/bench");

// On a GPU the pinned host→device bound is measured first: a broken GPU or driver fails here in a
// second, not after a synthetic checkpoint (a minute or more) was written.
let h2d: { device: string; pinned_gbps: number; pageable_gbps: number } | null = null;
if (device === "cuda") {
  const out = await new Deno.Command(here("../build/bench_h2d"), {
    args: ["1024"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  if (!out.success) throw new Error(`bench_h2d failed: ${text(out.stderr)}`);
  h2d = lastJson(text(out.stdout));
}

// ---- the checkpoint and its split -------------------------------------------------------------

/** `--dtype q8_0` etc.: the block format our split and llama.cpp's GGUF are quantized to. */
const quantArg = args.dtype && QUANTIZABLE.includes(args.dtype.toUpperCase() as BlockDType)
  ? args.dtype.toLowerCase() as Lowercase<BlockDType>
  : undefined;
let dir: string, label: string;
if (args.model) {
  dir = await Deno.realPath(args.model);
  label = dir.slice(dir.lastIndexOf("/") + 1).replace(/\.gguf$/i, "");
} else {
  const shape = args.shape ?? (device === "cuda" ? "llama3-8b" : "smollm2-135m");
  // A block format quantizes an F32 synthetic checkpoint at split time (llama.cpp: the same type).
  const dtype = (quantArg || !args.dtype ? (device === "cuda" ? "BF16" : "F32") : args.dtype) as
    | "F32"
    | "F16"
    | "BF16";
  const layers = args.layers ? Number(args.layers) : BENCH_LAYERS[shape];
  label = `${shape}${layers ? `-${layers}l` : ""} (synthetic) ${dtype}`;
  dir = `${tmp}/${shape}-${dtype}${layers ? `-${layers}l` : ""}`;
  try {
    await Deno.stat(`${dir}/config.json`);
    await Deno.stat(`${dir}/tokenizer.model`); // written by makeBenchModel since llama.cpp peers
  } catch {
    console.log(`writing a synthetic ${shape} checkpoint (${dtype}) to ${dir} ...`);
    await makeBenchModel(shape, dir, dtype, layers);
  }
}
const dtypeArg = quantArg ??
  (args.model && args.dtype
    ? ({ F32: "float32", F16: "float16", BF16: "bfloat16" } as const)[args.dtype as "F32"]
    : undefined);
const ck = await openCheckpoint(dir, { quiet: true, dtype: dtypeArg });
const storage = ck.gguf
  ? "gguf"
  : ck.quantize
  ? `${ck.dtype}+${ck.quantize.toLowerCase()}`
  : ck.dtype;
const splitDir = `${tmp}/splits/${label.replace(/[^\w.-]+/g, "_")}-${storage}`;
const split = await splitWithProgress(ck, { layerShardsSavingPath: splitDir });
const layerFiles = split.manifest.parts.filter((p) => p.id.startsWith("layer."))
  .map((p) => `${split.dir}/${p.file}`);
const allFiles = split.manifest.parts.map((p) => `${split.dir}/${p.file}`);
const modelBytes = split.manifest.parts.reduce((s, p) => s + p.dataBytes, 0);
// Weights one decoded token touches (`rabbit info`): layers + head; a MoE layer its routed share.
const weightsPerToken = (await modelInfo(ck)).streamedPerToken;

// ---- tools ------------------------------------------------------------------------------------

const dec = new TextDecoder();
async function run(cmd: string, argv: string[], env?: Record<string, string>) {
  const out = await new Deno.Command(cmd, { args: argv, env, stderr: "piped", stdout: "piped" })
    .output();
  return {
    ok: out.success,
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

function lastJson<T>(text: string): T {
  return JSON.parse(text.trim().split("\n").at(-1)!);
}

async function benchIo(...argv: string[]) {
  const r = await run(here("../build/bench_io"), argv);
  if (!r.ok) throw new Error(`bench_io ${argv[0]} failed: ${r.stderr}`);
  return r.stdout ? lastJson<Record<string, number>>(r.stdout) : {};
}

/**
 * A memory cgroup for one child process (v1 or v2), or why there is none. Made and read through
 * sh: Deno touches /sys only with --allow-all.
 */
interface Cgroup {
  procs: string;
  peak(): Promise<number>;
  oomKills(): Promise<number>;
  remove(): Promise<void>;
}
let cgroupSerial = 0;
async function cgroup(limit: number): Promise<Cgroup | string> {
  const name = `rabbitllm-bench-${Deno.pid}-${cgroupSerial++}`;
  const v1 = `/sys/fs/cgroup/memory/${name}`, v2 = `/sys/fs/cgroup/${name}`;
  const made = await run("sh", [
    "-c",
    `if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
       mkdir "${v1}" && echo ${limit} > "${v1}/memory.limit_in_bytes" && echo v1
     elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
       echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
       mkdir "${v2}" && echo ${limit} > "${v2}/memory.max" &&
         { echo 0 > "${v2}/memory.swap.max" 2>/dev/null; echo v2; }
     else echo "no memory cgroup controller here" >&2; exit 1; fi`,
  ]);
  if (!made.ok) {
    return `no memory limit: ${
      made.stderr.trim() || "cannot create a memory cgroup"
    } (it needs root)`;
  }
  const d = made.stdout.trim() === "v1" ? v1 : v2;
  const sh = async (cmd: string) => (await run("sh", ["-c", cmd])).stdout.trim();
  const number = async (cmd: string) => Number(await sh(cmd)) || 0;
  return made.stdout.trim() === "v1"
    ? {
      procs: `${d}/cgroup.procs`,
      peak: () => number(`cat "${d}/memory.max_usage_in_bytes"`),
      oomKills: () => number(`awk '/^oom_kill /{print $2}' "${d}/memory.oom_control"`),
      remove: async () => void await sh(`rmdir "${d}"`),
    }
    : {
      procs: `${d}/cgroup.procs`,
      peak: () => number(`cat "${d}/memory.peak"`),
      oomKills: () => number(`awk '/^oom_kill /{print $2}' "${d}/memory.events"`),
      remove: async () => void await sh(`rmdir "${d}"`),
    };
}

/** Runs argv (in `cg` when given); the parsed JSON line, or why there is none. */
async function child<T>(argv: string[], cg?: Cgroup): Promise<T | string> {
  // Through sh: it moves itself into the cgroup before exec, so every page of the child counts.
  const r = cg
    ? await run("sh", ["-c", 'echo $$ > "$0" && exec "$@"', cg.procs, ...argv])
    : await run("sh", ["-c", 'exec "$@"', "sh", ...argv]);
  if (cg && (r.signal === "SIGKILL" || r.code === 137 || await cg.oomKills() > 0)) {
    return "killed by the OOM killer";
  }
  // The planner refuses memory that cannot hold the smallest plan (MemoryLimitError) up front.
  const refused = /MemoryLimitError: (.*?); a smaller/.exec(r.stderr);
  if (!r.ok && refused) return `refused by the planner: ${refused[1]}`;
  if (!r.ok) return `failed: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`;
  return lastJson<T>(r.stdout);
}

const deno = Deno.execPath();
const buildDir = here("../build");
function ours(mode: string, batch: number): string[] {
  return [
    deno,
    "run",
    "--allow-read",
    `--allow-write=${splitDir}`,
    "--allow-env=HF_HUB_CACHE,HF_HOME,XDG_CACHE_HOME,HOME,RABBITLLM_LIB,RABBITLLM_CUDA_LIB",
    `--allow-ffi=${buildDir}`,
    "--allow-sys=systemMemoryInfo",
    here("./bench_run.ts"),
    `--model=${dir}`,
    `--split=${split.dir}`,
    `--dtype=${ck.gguf ? "auto" : quantArg ?? ck.dtype}`,
    `--device=${device}`,
    `--mode=${mode}`,
    `--prompt=${promptLen}`,
    `--new=${newTokens}`,
    `--batch=${batch}`,
    `--repeat=${args.repeat}`,
    ...(args.int8 ? ["--int8"] : []),
  ];
}

// ---- llama.cpp (--peers) ----------------------------------------------------------------------

const LLAMA_CPP = "0.3.36";
function cacheDir(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  return `${xdg || `${Deno.env.get("HOME")}/.cache`}/rabbitllm/bench`;
}

/**
 * GCC 12's amxtileintrin.h gives `ldtilecfg` an 8-byte memory operand, so at -O3 the stores that
 * fill ggml's tile config (ggml-cpu/amx/mmq.cpp `ggml_tile_config_init`) are dropped as dead and
 * the CPU faults on the garbage config: every quantized file segfaults on an AMX CPU (this VM's
 * Sapphire Rapids). A compiler barrier before the load keeps the stores; nothing else changes.
 */
const AMX_FIX = {
  file: "vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp",
  before: "    _tile_loadconfig(&tc);",
  insert: '    __asm__ volatile("" : : "r"(&tc) : "memory"); // rabbitllm bench: GCC 12 ldtilecfg',
};

/** The venv python with llama-cpp-python, and the GGUF of this checkpoint (built once). */
async function llamaCpp(): Promise<{ python: string; gguf: string } | string> {
  const cache = cacheDir();
  const venv = `${cache}/llama-cpp-python-${LLAMA_CPP}-amxfix`;
  const python = `${venv}/bin/python`;
  const sdist = `${cache}/llama_cpp_python-${LLAMA_CPP}`;
  if (
    (await Deno.stat(`${sdist}/vendor/llama.cpp/convert_hf_to_gguf.py`).catch(() => null)) === null
  ) {
    const r = await run("sh", [
      "-c",
      `mkdir -p "${cache}" && cd "${cache}" && python3 -m pip download -q --no-binary :all: --no-deps llama-cpp-python==${LLAMA_CPP} -d . && tar xzf llama_cpp_python-${LLAMA_CPP}.tar.gz`,
    ]);
    if (!r.ok) return `llama-cpp-python sdist download failed: ${r.stderr.trim()}`;
  }
  if (!(await run("sh", ["-c", `"${python}" -c "import llama_cpp"`])).ok) {
    console.log(
      `building llama-cpp-python ${LLAMA_CPP} from source into ${venv} (GGML_NATIVE, the AMX ` +
        "tile-config fix applied; about 10 minutes, once) ...",
    );
    // A patched copy of the sdist (the fix above, checked to apply once), built in place.
    const src = `${cache}/src-${LLAMA_CPP}-amxfix`;
    const patch = [
      "import sys",
      "p, before, insert = sys.argv[1:4]",
      "t = open(p).read()",
      "if t.count(before) != 1: sys.exit(f'the AMX fix does not apply: {before.strip()!r} is not once in {p}')",
      "open(p, 'w').write(t.replace(before, insert + '\\n' + before))",
    ].join("\n");
    const r = await run("sh", [
      "-c",
      `rm -rf "$1" && mkdir -p "$1" && cp -r "$2/." "$1/" && python3 -c "$3" "$1/$4" "$5" "$6" && python3 -m venv "$7" && CMAKE_ARGS=-DGGML_NATIVE=ON "$7/bin/pip" install -q --no-cache-dir "$1"`,
      "sh",
      src,
      sdist,
      patch,
      AMX_FIX.file,
      AMX_FIX.before,
      AMX_FIX.insert,
      venv,
    ]);
    if (!r.ok) return `llama-cpp-python build failed: ${r.stderr.trim().split("\n").slice(-3)}`;
  }
  if (ck.gguf) return { python, gguf: ck.gguf.file }; // the very file ours runs
  const outtype = { float32: "f32", float16: "f16", bfloat16: "bf16" }[ck.dtype];
  const gguf = `${tmp}/gguf/${label.replace(/[^\w.-]+/g, "_")}-${outtype}.gguf`;
  if ((await Deno.stat(gguf).catch(() => null)) === null) {
    await Deno.mkdir(`${tmp}/gguf`, { recursive: true });
    console.log(`converting ${dir} to ${gguf} (convert_hf_to_gguf.py) ...`);
    const llama = `${sdist}/vendor/llama.cpp`;
    const r = await run("sh", [
      "-c",
      `PYTHONPATH="${llama}/gguf-py" python3 "${llama}/convert_hf_to_gguf.py" "${dir}" --outtype ${outtype} --outfile "${gguf}.tmp" && mv "${gguf}.tmp" "${gguf}"`,
    ]);
    if (!r.ok) return `convert_hf_to_gguf.py failed: ${r.stderr.trim().split("\n").slice(-3)}`;
  }
  if (!quantArg) return { python, gguf };
  const quantized = await llamaQuantize(python, gguf, quantArg);
  return typeof quantized === "string" && !quantized.endsWith(".gguf")
    ? quantized
    : { python, gguf: quantized };
}

/** llama.cpp's ftype of each block format (llama_ftype: LLAMA_FTYPE_MOSTLY_*). */
const LLAMA_FTYPE: Record<string, number> = {
  q8_0: 7,
  q4_0: 2,
  q4_1: 3,
  q5_0: 8,
  q5_1: 9,
  q4_k: 14, // LLAMA_FTYPE_MOSTLY_Q4_K_S
};

/**
 * The GGUF at `base` quantized to `type` by llama.cpp's own quantizer (llama_model_quantize through
 * llama-cpp-python), once: its path, or why it failed.
 */
async function llamaQuantize(python: string, base: string, type: string): Promise<string> {
  const gguf = base.replace(/-[a-z0-9]+\.gguf$/, `-${type}.gguf`);
  if ((await Deno.stat(gguf).catch(() => null)) !== null) return gguf;
  console.log(`quantizing ${base} to ${gguf} (llama_model_quantize) ...`);
  const code = [
    "import ctypes, sys, llama_cpp",
    "p = llama_cpp.llama_model_quantize_default_params()",
    `p.ftype = ${LLAMA_FTYPE[type]}`,
    "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))",
  ].join("\n");
  const r = await run("sh", [
    "-c",
    'exec "$0" -c "$1" "$2" "$3"',
    python,
    code,
    base,
    `${gguf}.tmp`,
  ]);
  if (!r.ok) return `llama_model_quantize failed: ${r.stderr.trim().split("\n").slice(-3)}`;
  await Deno.rename(`${gguf}.tmp`, gguf);
  return gguf;
}

// ---- the rows ---------------------------------------------------------------------------------

interface Row {
  name: string;
  batch: number;
  regime: "resident" | "streamed" | "limit" | "host";
  engine: "ours" | "transformers" | "llama.cpp";
  result: (RowResult & { peak?: number; diskGbps?: number }) | {
    prefill: number;
    decode: number;
    diskPerStep?: number | null;
    peak?: number;
  } | null;
  note?: string;
}
const rows: Row[] = [];
if (args["limit-basis"] !== "own" && args["limit-basis"] !== "fp16") {
  throw new Error(`--limit-basis: expected own or fp16, got ${args["limit-basis"]}`);
}
const fp16Bytes = 2 * (await modelInfo(ck)).parameters;
const limitBasis = args["limit-basis"] === "fp16" ? fp16Bytes : modelBytes;
const limitBytes = Math.round(Number(args["memory-limit"]) * limitBasis);
const MB = (n: number) => (n / 1e6).toFixed(0);

async function oursRow(name: string, mode: string, regime: Row["regime"], batch: number) {
  let cg: Cgroup | string | undefined;
  if (regime === "limit") {
    cg = await cgroup(limitBytes);
    if (typeof cg === "string") {
      rows.push({ name, batch, regime, engine: "ours", result: null, note: cg });
      return;
    }
    await benchIo("drop", ...allFiles);
  }
  console.log(`  ${name}, batch ${batch} ...`);
  // A VM's disk changes speed by the minute: a row that reads it is compared with the disk as
  // measured just before and just after it (their mean).
  const before = regime === "limit" ? await diskNow() : 0;
  const r = await child<RowResult>(ours(mode, batch), cg as Cgroup | undefined);
  const diskGbps = regime === "limit" ? (before + await diskNow()) / 2 : undefined;
  const peak = cg && typeof cg !== "string" ? await cg.peak() : undefined;
  if (cg && typeof cg !== "string") await cg.remove();
  rows.push(
    typeof r === "string"
      ? { name, batch, regime, engine: "ours", result: null, note: r }
      : { name, batch, regime, engine: "ours", result: { ...r, peak, diskGbps } },
  );
}

const diskSeen: number[] = [];
/** Sequential read GB/s of the layer files now (page cache dropped, direct I/O). */
async function diskNow(): Promise<number> {
  const g = (await benchIo("disk", ...layerFiles)).disk_gbps;
  diskSeen.push(g);
  return g;
}

console.log(`\nbounds ...`);
const mem = device === "cpu" ? (await benchIo("mem")).memory_gbps : null;
await diskNow();

console.log(`rows (${label}, ${device}) ...`);
const tag = `rabbitllm ${device}`;
for (const b of batches) await oursRow(`${tag}, every layer resident`, "resident", "resident", b);
if (device === "cpu") {
  await oursRow(`${tag}, streamed from the page cache`, "streamed", "streamed", 1);
  for (const b of batches) {
    await oursRow(`${tag}, ${args["memory-limit"]}× memory limit`, "auto", "limit", b);
  }
} else {
  await oursRow(`${tag}, streamed from disk`, "streamed", "streamed", 1);
  await oursRow(`${tag}, streamed from the pinned host tier`, "host", "host", 1);
}

if (device === "cpu" && !args["no-hf"]) {
  console.log("  transformers ...");
  const r = await child<{ prefill: number; decode: number; transformers: string; torch: string }>(
    ["python3", here("./bench_hf.py"), dir, String(promptLen), String(newTokens)],
  );
  rows.push(
    typeof r === "string"
      ? {
        name: "HF transformers",
        batch: 1,
        regime: "resident",
        engine: "transformers",
        result: null,
        note: r,
      }
      : {
        name: `HF transformers ${r.transformers} (torch ${r.torch})`,
        batch: 1,
        regime: "resident",
        engine: "transformers",
        result: r,
      },
  );
}

if (device === "cpu" && args.peers) {
  const peer = await llamaCpp();
  if (typeof peer === "string") {
    rows.push({
      name: "llama.cpp",
      batch: 1,
      regime: "resident",
      engine: "llama.cpp",
      result: null,
      note: peer,
    });
  } else {
    const argv = [
      peer.python,
      here("./bench_llamacpp.py"),
      peer.gguf,
      String(promptLen),
      String(newTokens),
      args.repeat,
    ];
    for (const regime of ["resident", "limit"] as const) {
      let name = `llama.cpp ${LLAMA_CPP}${quantArg ? ` ${quantArg}` : ""} (mmap)${
        regime === "limit" ? `, ${args["memory-limit"]}× memory limit` : ""
      }`;
      let cg: Cgroup | string | undefined;
      if (regime === "limit") {
        cg = await cgroup(limitBytes);
        if (typeof cg === "string") {
          rows.push({ name, batch: 1, regime, engine: "llama.cpp", result: null, note: cg });
          continue;
        }
        await benchIo("drop", peer.gguf);
      }
      console.log(`  ${name} ...`);
      type Peer = { prefill: number; decode: number; disk_per_step: number | null };
      let r = await child<Peer>(argv, cg as Cgroup | undefined);
      if (typeof r === "string" && r.startsWith("failed") && (quantArg || ck.gguf)) {
        // Its repacked / AMX layouts may crash (before AMX_FIX: every quantized file on this VM's
        // Sapphire Rapids): retry without them, and say so in the row.
        if (cg) await benchIo("drop", peer.gguf);
        const again = await child<Peer>([...argv, "no-extra-bufts"], cg as Cgroup | undefined);
        r = typeof again === "string" ? `${r}; without extra buffer types: ${again}` : again;
        if (typeof again !== "string") name = `${name}, no repack (the default crashed)`;
      }
      const peak = cg && typeof cg !== "string" ? await cg.peak() : undefined;
      if (cg && typeof cg !== "string") await cg.remove();
      rows.push(
        typeof r === "string"
          ? { name, batch: 1, regime, engine: "llama.cpp", result: null, note: r }
          : {
            name,
            batch: 1,
            regime,
            engine: "llama.cpp",
            result: { ...r, diskPerStep: r.disk_per_step, peak },
          },
      );
    }
  }
}

// ---- the table --------------------------------------------------------------------------------

const find = (engine: Row["engine"], regime: Row["regime"], batch = 1) =>
  rows.find((r) => r.engine === engine && r.regime === regime && r.batch === batch)?.result ?? null;
function ratios(r: Row): string {
  if (!r.result) return "";
  const out: string[] = [];
  const x = (a: number, b: number | undefined, what: string) => {
    if (b) out.push(`${(a / b).toFixed(2)}× ${what}`);
  };
  const peer = find("llama.cpp", r.regime === "streamed" ? "resident" : r.regime);
  if (r.engine === "ours" && r.batch === 1 && peer) {
    x(r.result.decode, peer.decode, "llama.cpp decode");
    if (r.regime === "resident") x(r.result.prefill, peer.prefill, "llama.cpp prefill");
  }
  if (r.engine === "ours" && r.regime === "streamed") {
    x(r.result.decode, find("ours", "resident")?.decode, "resident decode");
  }
  if (r.batch > 1) x(r.result.decode, find(r.engine, r.regime)?.decode, "batch 1");
  const d = r.result.diskPerStep;
  if (r.regime === "limit" && d && "stepSeconds" in r.result) {
    const measured = "diskGbps" in r.result ? r.result.diskGbps : undefined;
    const gbps: number = measured ?? Math.max(...diskSeen);
    out.push(
      `${(r.result.stepSeconds / (d / (gbps * 1e9))).toFixed(2)}× disk bound (${
        gbps.toFixed(2)
      } GB/s)`,
    );
  }
  return out.join(", ");
}

const cpuName = /model name\s*:\s*(.+)/.exec((await run("sh", ["-c", "cat /proc/cpuinfo"])).stdout)
  ?.[1] ?? "unknown CPU";
const lines: string[] = [];
const say = (s = "") => {
  lines.push(s);
  console.log(s);
};
say();
say(
  `${label}, ${storage}${args.int8 ? " (int8 activations)" : ""}: ${
    MB(modelBytes)
  } MB of weights, ${
    MB(weightsPerToken)
  } MB read per decoded token; prompt ${promptLen}, ${newTokens} new tokens, greedy, best of ${args.repeat}`,
);
say(`${cpuName}, ${navigator.hardwareConcurrency} cores, ${new Date().toISOString().slice(0, 10)}`);
const bounds = [
  mem !== null
    ? `memory read ${mem.toFixed(1)} GB/s (decode bound ${
      (mem * 1e9 / weightsPerToken).toFixed(1)
    } tok/s)`
    : "",
  `sequential disk read ${Math.min(...diskSeen).toFixed(2)}–${
    Math.max(...diskSeen).toFixed(2)
  } GB/s (page cache dropped; measured before and after every row that reads the disk)`,
  h2d
    ? `${h2d.device}: pinned host→device ${h2d.pinned_gbps} GB/s, pageable ${h2d.pageable_gbps} GB/s`
    : "",
  device === "cpu"
    ? `memory limit ${MB(limitBytes)} MB (${args["memory-limit"]}× the ${
      args["limit-basis"] === "fp16" ? "fp16 model's bytes" : "model's own bytes"
    })`
    : "",
].filter(Boolean);
say(`bounds: ${bounds.join("; ")}`);
say();
say("| engine | batch | prefill tok/s | decode tok/s | s/step | disk MB/step | peak MB | ratios |");
say("|---|---:|---:|---:|---:|---:|---:|---|");
for (const r of rows) {
  const res = r.result;
  if (!res) {
    say(`| ${r.name} | ${r.batch} | — | — | — | — | — | ${r.note} |`);
    continue;
  }
  const step = "stepSeconds" in res ? res.stepSeconds : r.batch / res.decode;
  const d = res.diskPerStep;
  say(
    `| ${r.name} | ${r.batch} | ${res.prefill.toFixed(1)} | ${res.decode.toFixed(1)} | ${
      step.toFixed(3)
    } | ${d === null || d === undefined ? "—" : MB(d)} | ${res.peak ? MB(res.peak) : "—"} | ${
      ratios(r)
    } |`,
  );
}
if (args.json) {
  await Deno.writeTextFile(
    args.json,
    JSON.stringify(
      { label, device, cpu: cpuName, modelBytes, weightsPerToken, mem, diskSeen, h2d, rows },
      null,
      1,
    ),
  );
}
