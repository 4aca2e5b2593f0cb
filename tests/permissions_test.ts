/**
 * The library and the CLI under exactly the permissions README.md documents, as a JSR user runs
 * them: child processes `deno run <README's grants> main.ts`, where main.ts imports the package's
 * mod.ts over http, and the CLI installed with `deno install` and the README's install line. A
 * grant the library needs and the README does not document fails a child; its stderr is in the
 * assertion message.
 *
 * The grants are parsed from README.md at run time (the two ```sh blocks with `deno run …
 * your_program.ts`, the `deno install … jsr:@rabbitllm/rabbitllm/cli` line, and the rows of the
 * permission table whose use is "the first run only"), so editing the README changes what is
 * tested. Only placeholders are substituted:
 *
 * - `$HOME` → a fresh temporary HOME (so `$HOME/.cache/rabbitllm`, the native library's cache, is
 *   empty and the first run builds it; the HF cache `~/.cache/huggingface/hub` is fresh too);
 *   `M=/path/to/checkpoint` → a temporary copy of models/stories260k (the split is written into
 *   it); `$C`, `$M` → those values.
 * - `jsr.io` → `127.0.0.1:<port>` of a static server in this process that serves the files
 *   `deno publish` would publish (deno.json's publish include/exclude), under JSR's path
 *   `/@rabbitllm/rabbitllm/<version>/`, with bare specifiers rewritten to deno.json's imports as
 *   JSR does at publish. `--allow-import=127.0.0.1:<port>` is added to every line: Deno allows
 *   imports from jsr.io by default, not from a local server (scripts/remote_import_check.sh does
 *   the same). The README's `--allow-net=jsr.io` (fetching the C sources) maps to
 *   `--allow-net=127.0.0.1:<port>`.
 * - `huggingface.co` → the fake hub's `127.0.0.1:<port>` (tests/fake_hub.ts, passed as
 *   `HF_ENDPOINT`); `*.huggingface.co`, `hf.co`, `*.hf.co` (the hub's CDN hosts) → the fake CDN's
 *   `127.0.0.1:<port>`. Any other host in the README fails the test (the mapping needs updating).
 *
 * The children inherit this process's environment with every variable the library reads (the
 * README's `--allow-env` list, tests/fake_hub.ts's HUB_ENV, RABBITLLM_*, CC, NVCC) emptied, which
 * the library treats as unset; DENO_DIR is this machine's (npm packages already cached; the
 * 127.0.0.1 modules are removed from it afterwards). Cases, in order (one native build, reused):
 *
 * 1. negative: the local line without the first-run-only grants on an empty cache fails saying
 *    what to grant (`--allow-run=cc,gcc`);
 * 2. the local (scoped) line, first run: builds the library into the cache from the served
 *    sources, fromPretrained + greedy generate on the checkpoint copy (the story stories260k
 *    produces, tests/fixtures/stories260k/reference.json), a prompt through the tokenizer, and a
 *    `dtype: "q8_0"` split;
 * 3. the same line without the first-run-only grants (`--allow-run`, `--allow-net=jsr.io`): works,
 *    no build;
 * 4. negative control: 3 without `--allow-ffi` fails with NotCapable naming --allow-ffi;
 * 5. the hub line (unscoped read/write, the hub hosts): a hub id downloaded from the fake hub, its
 *    chat template applied; again without the first-run-only grants;
 * 6. the CLI installed with the install line's permissions (`<permissions above>`: the hub line,
 *    the one above that can pull into the HF cache): `pull` from the fake hub, `list`, `run` and
 *    `generate` on the local checkpoint (the same text as the library), `run` of the pulled model
 *    with a prompt (a chat turn); and `generate` on the checkpoint under the scoped local line.
 *
 * The served ffi/native_sources.ts is regenerated from the served files, as `deno task
 * native:sources` does before publishing (tests/native_lib_test.ts checks the committed one), so a
 * C source being edited in this checkout does not fail this test. About 15 s on 2 cores.
 */
import assert from "node:assert/strict";
import { render as renderNativeSources } from "../scripts/native_sources.ts";
import { FakeHub, HUB_ENV } from "./fake_hub.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const STORIES = `${ROOT}models/stories260k`;
const DENO_JSON = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)) as {
  version: string;
  imports: Record<string, string>;
  publish: { include: string[]; exclude?: string[] };
};
const REFERENCE = JSON.parse(
  Deno.readTextFileSync(`${ROOT}tests/fixtures/stories260k/reference.json`),
) as { greedy_text: string };
const CHECKPOINT_FILES = [
  "config.json",
  "model.safetensors",
  "tokenizer.json",
  "tokenizer_config.json",
];
const CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}" +
  "{% if add_generation_prompt %}<|assistant|>{% endif %}";
const HUB_REPO = "karpathy/stories260k"; // fromPretrained downloads it
const CLI_REPO = "rabbit/stories-chat"; // rabbit pull downloads it
const CHILD_TIMEOUT_MS = 60_000;

// ---------------------------------------------------------------- README.md's grants

/** The permission flags README.md documents, with placeholders still in. */
interface ReadmeGrants {
  /** The line for a program that also downloads from the hub (unscoped read/write). */
  hub: string[];
  /** The line for a local checkpoint directory ($C, $M). */
  local: string[];
  /** The local line's variables (`C=… M=…`). */
  vars: Record<string, string>;
  /** The install line's flags (`<permissions above>` resolved to the hub line). */
  cli: string[];
  /** The table's grants needed on "the first run only", e.g. `--allow-run=cc,gcc`. */
  firstRunOnly: string[];
}

function readmeGrants(readme: string): ReadmeGrants {
  const lines: { vars: Record<string, string>; flags: string[] }[] = [];
  for (const [, block] of readme.matchAll(/^```sh\n([\s\S]*?)^```/gm)) {
    const vars: Record<string, string> = {};
    for (const line of block.replace(/\\\n\s*/g, " ").split("\n")) {
      if (/^\s*(\w+=\S+\s*)+$/.test(line)) {
        for (const [, k, v] of line.matchAll(/(\w+)=(\S+)/g)) vars[k] = v;
        continue;
      }
      const m = /^\s*deno run (.*) your_program\.ts\s*$/.exec(line);
      if (m) lines.push({ vars, flags: m[1].trim().split(/\s+/) });
    }
  }
  assert.equal(
    lines.length,
    2,
    "README.md: expected two ```sh blocks with `deno run … your_program.ts` (the hub line and " +
      "the local checkpoint line); update tests/permissions_test.ts",
  );
  const usesM = (l: (typeof lines)[number]) => l.flags.some((f) => f.includes("$M"));
  const local = lines.find(usesM);
  const hub = lines.find((l) => !usesM(l));
  assert.ok(local && hub, "README.md: one `deno run` line must use $M (local), one not (hub)");
  for (const l of lines) assert.ok(l.flags.every((f) => f.startsWith("--allow-")), l.flags.join());

  const install = /deno install (.*?) jsr:@rabbitllm\/rabbitllm\/cli/.exec(readme);
  assert.ok(install, "README.md: no `deno install … jsr:@rabbitllm/rabbitllm/cli` line");
  const installArgs = install[1].split(/\s+/);
  let cli = installArgs.filter((a) => a.startsWith("--allow-"));
  if (install[1].includes("<permissions above>")) {
    assert.equal(cli.length, 0, install[0]);
    cli = hub.flags; // the only line above that can pull from the hub into its cache
  }
  assert.ok(cli.length > 0, `README.md: no permissions in ${install[0]}`);

  const firstRunOnly: string[] = [];
  for (const row of readme.split("\n").filter((l) => /^\|\s*`--allow-/.test(l))) {
    const [, perm, use] = row.split("|").map((c) => c.trim());
    if (/^the first run only/.test(use)) firstRunOnly.push(/`([^`]+)`/.exec(perm)![1]);
  }
  assert.ok(
    firstRunOnly.some((g) => g.startsWith("--allow-run")),
    "README.md's permission table: no `--allow-run` row for the first run only",
  );
  return { hub: hub.flags, local: local.flags, vars: local.vars, cli, firstRunOnly };
}

/** `flags` without the values of `drop` (`--allow-run=cc,gcc`); a flag left empty goes. */
function without(flags: string[], drop: string[]): string[] {
  return flags.flatMap((flag) => {
    const [name, value] = flag.split("=", 2);
    let values = value?.split(",");
    for (const d of drop) {
      const [dName, dValue] = d.split("=", 2);
      if (dName !== name) continue;
      // Dropping part of an unscoped grant drops all of it.
      if (dValue === undefined || values === undefined) return [];
      values = values.filter((v) => !dValue.split(",").includes(v));
    }
    if (values === undefined) return [flag];
    return values.length ? [`${name}=${values.join(",")}`] : [];
  });
}

/** The substitutions of the header: placeholders → this test's paths and servers. */
interface Places {
  home: string;
  model: string;
  pkgHost: string;
  hubHost: string;
  cdnHost: string;
}

function substitute(flags: string[], vars: Record<string, string>, p: Places): string[] {
  const values: Record<string, string> = { HOME: p.home };
  for (const [k, v] of Object.entries(vars)) {
    // A path the user fills in (/path/to/checkpoint) is the checkpoint copy.
    values[k] = v.startsWith("/path/to/") ? p.model : v.replace(/\$(\w+)/g, (_, n) => values[n]);
  }
  const hosts: Record<string, string> = {
    "jsr.io": p.pkgHost,
    "huggingface.co": p.hubHost,
    "*.huggingface.co": p.cdnHost,
    "hf.co": p.cdnHost,
    "*.hf.co": p.cdnHost,
  };
  const out = flags.map((flag) => {
    const f = flag.replace(/\$(\w+)/g, (m, n) => {
      assert.ok(n in values, `README.md: ${flag}: no substitution for ${m}`);
      return values[n];
    });
    if (!f.startsWith("--allow-net=")) return f;
    const net = f.slice("--allow-net=".length).split(",").map((h) => {
      assert.ok(h in hosts, `README.md: --allow-net host ${h} has no local stand-in here`);
      return hosts[h];
    });
    return `--allow-net=${[...new Set(net)].join(",")}`;
  });
  return [`--allow-import=${p.pkgHost}`, ...out];
}

// ---------------------------------------------------------------- the package, served as JSR

function globRegExp(glob: string): RegExp {
  const re = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(
    /\*\*\/|\*/g,
    (m) => m === "*" ? "[^/]*" : "(?:.*/)?",
  );
  return new RegExp(`^${re}$`);
}

function walk(dir: string, prefix = ""): string[] {
  return [...Deno.readDirSync(`${dir}/${prefix}`)].flatMap((e) => {
    const p = `${prefix}${e.name}`;
    return e.isDirectory ? walk(dir, `${p}/`) : e.isFile ? [p] : [];
  });
}

/** The published files (deno.json's publish), bare specifiers rewritten as JSR does. */
function packageFiles(): Map<string, Uint8Array> {
  const include = DENO_JSON.publish.include.map(globRegExp);
  const exclude = (DENO_JSON.publish.exclude ?? []).map(globRegExp);
  const files = new Map<string, Uint8Array>();
  for (const p of walk(ROOT.replace(/\/$/, ""))) {
    if (p.startsWith(".") || p.startsWith("build/") || p.startsWith("node_modules/")) continue;
    if (!include.some((r) => r.test(p)) || exclude.some((r) => r.test(p))) continue;
    let bytes = Deno.readFileSync(`${ROOT}${p}`);
    if (p.endsWith(".ts")) {
      const text = new TextDecoder().decode(bytes).replace(
        /(\bfrom\s*|\bimport\s*\(\s*)(["'])([^"']+)\2/g,
        (m, pre, q, spec) => spec in DENO_JSON.imports ? pre + q + DENO_JSON.imports[spec] + q : m,
      );
      bytes = new TextEncoder().encode(text);
    }
    files.set(p, bytes);
  }
  assert.ok(files.has("mod.ts") && files.has("cli.ts") && files.has("ffi/native_sources.ts"));
  // As `deno task native:sources` leaves it before publishing (see the header).
  files.set("ffi/native_sources.ts", new TextEncoder().encode(renderNativeSources()));
  return files;
}

function servePackage(files: Map<string, Uint8Array>, base: string) {
  const types: Record<string, string> = { ts: "application/typescript", json: "application/json" };
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const bytes = path.startsWith(base) ? files.get(path.slice(base.length)) : undefined;
    if (!bytes) return new Response("not found", { status: 404 });
    const ext = path.slice(path.lastIndexOf(".") + 1);
    return new Response(bytes.slice(), {
      headers: { "content-type": types[ext] ?? "text/plain" },
    });
  });
}

// ---------------------------------------------------------------- children

interface Result {
  code: number;
  out: string;
  err: string;
  secs: number;
}

async function output(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const dec = (b: Uint8Array) => new TextDecoder().decode(b);
  assert.ok(r.success, `${cmd} ${args.join(" ")}: ${dec(r.stderr)}`);
  return dec(r.stdout);
}

/** What a failed case shows: the command line, the exit code, the child's stdout and stderr. */
function show(what: string, args: string[], r: Result): string {
  return `${what}\n  $ ${args.join(" ")}\n  exit ${r.code} in ${r.secs.toFixed(1)} s\n` +
    `  stdout: ${r.out.slice(-2000)}\n  stderr:\n${r.err.slice(-6000)}`;
}

const main = (pkgUrl: string) =>
  `import { AutoModel } from "${pkgUrl}mod.ts";

const [mode, id] = Deno.args;
const out: Record<string, unknown> = {};
if (mode === "local") {
  await using m = await AutoModel.fromPretrained(id, { quiet: true });
  const [ids] = await m.generate([[1]], { maxNewTokens: 64, eosTokenId: [], temperature: 0 });
  out.story = m.tokenizer!.decode(ids.slice(1), { skipSpecialTokens: true });
  const prompt = "Once upon a time";
  const [p] = await m.generate(prompt, { maxNewTokens: 20, temperature: 0 });
  const n = m.tokenizer!.encode(prompt).length;
  out.continuation = prompt + m.tokenizer!.decode(p.slice(n), { skipSpecialTokens: true });
  await using q = await AutoModel.fromPretrained(id, { dtype: "q8_0", quiet: true });
  const [qids] = await q.generate([[1]], { maxNewTokens: 64, eosTokenId: [], temperature: 0 });
  out.q8Story = q.tokenizer!.decode(qids.slice(1), { skipSpecialTokens: true });
} else {
  await using m = await AutoModel.fromPretrained(id, { quiet: true });
  const [ids] = await m.generate([[1]], { maxNewTokens: 64, eosTokenId: [], temperature: 0 });
  out.story = m.tokenizer!.decode(ids.slice(1), { skipSpecialTokens: true });
  out.chat = m.tokenizer!.applyChatTemplate([{ role: "user", content: "Hi" }], {
    addGenerationPrompt: true,
  });
}
console.log(JSON.stringify(out));
`;

Deno.test("permissions: the library and the CLI under exactly README.md's grants", async (t) => {
  const g = readmeGrants(await Deno.readTextFile(`${ROOT}README.md`));
  const files = packageFiles();
  const denoDir = JSON.parse(await output("deno", ["info", "--json"])).denoDir as string;
  // The hub: two repos of stories260k, with a chat template.
  const repoFiles: Record<string, Uint8Array | string> = {};
  for (const f of CHECKPOINT_FILES) repoFiles[f] = await Deno.readFile(`${STORIES}/${f}`);
  repoFiles["tokenizer_config.json"] = JSON.stringify({
    ...JSON.parse(new TextDecoder().decode(repoFiles["tokenizer_config.json"] as Uint8Array)),
    chat_template: CHAT_TEMPLATE,
  });
  const tmp = await Deno.makeTempDir({ prefix: "rabbitllm-perms-" });
  const home = `${tmp}/home`, model = `${tmp}/stories260k`, app = `${tmp}/app`;
  const hub = FakeHub.start([HUB_REPO, CLI_REPO].map((id) => ({
    id,
    branches: { main: repoFiles },
  })));
  const base = `/@rabbitllm/rabbitllm/${DENO_JSON.version}/`;
  const server = servePackage(files, base);
  const pkgHost = `127.0.0.1:${server.addr.port}`;
  const pkgUrl = `http://${pkgHost}${base}`;
  try {
    for (const d of [home, model, app]) await Deno.mkdir(d);
    for (const f of CHECKPOINT_FILES) await Deno.copyFile(`${STORIES}/${f}`, `${model}/${f}`);
    // The CDN's host: where the hub redirects an LFS file.
    const head = await fetch(`${hub.url}/${HUB_REPO}/resolve/main/model.safetensors`, {
      method: "HEAD",
      redirect: "manual",
    });
    await head.body?.cancel();
    const places: Places = {
      home,
      model,
      pkgHost,
      hubHost: new URL(hub.url).host,
      cdnHost: new URL(head.headers.get("location")!).host,
    };
    const hubLine = substitute(g.hub, g.vars, places);
    const localLine = substitute(g.local, g.vars, places);
    const localLater = substitute(without(g.local, g.firstRunOnly), g.vars, places);
    const hubLater = substitute(without(g.hub, g.firstRunOnly), g.vars, places);
    const cliLine = substitute(g.cli, g.vars, places);
    await Deno.writeTextFile(`${app}/main.ts`, main(pkgUrl));

    // Every variable the library reads, emptied (= unset for it); HOME fresh; DENO_DIR shared.
    const env: Record<string, string> = { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" };
    const readEnv = [...g.hub, ...g.local, ...g.cli]
      .filter((f) => f.startsWith("--allow-env="))
      .flatMap((f) => f.slice("--allow-env=".length).split(","));
    for (
      const v of [
        ...readEnv,
        ...HUB_ENV,
        "XDG_CACHE_HOME",
        "CC",
        "NVCC",
        "RABBITLLM_LIB",
        "RABBITLLM_CUDA_LIB",
        "RABBITLLM_LIB_URL",
        "RABBITLLM_LIB_SHA256",
        "RABBITLLM_CUDA_LIB_URL",
        "RABBITLLM_CUDA_LIB_SHA256",
      ]
    ) env[v] = "";
    Object.assign(env, {
      HOME: home,
      DENO_DIR: denoDir,
      HF_ENDPOINT: hub.url,
      RUST_BACKTRACE: "0",
    });

    const spawn = async (cmd: string, args: string[]): Promise<Result> => {
      const t0 = performance.now();
      const r = await new Deno.Command(cmd, {
        args,
        cwd: app,
        env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(CHILD_TIMEOUT_MS),
      }).output();
      const dec = (b: Uint8Array) => new TextDecoder().decode(b);
      return {
        code: r.code,
        out: dec(r.stdout),
        err: dec(r.stderr),
        secs: (performance.now() - t0) / 1000,
      };
    };
    /** `deno run <grants> main.ts <args>`: its JSON line, or an assertion showing stderr. */
    const program = async (what: string, grants: string[], args: string[]) => {
      const argv = ["run", ...grants, "main.ts", ...args];
      const r = await spawn("deno", argv);
      assert.equal(r.code, 0, show(`${what}: failed`, ["deno", ...argv], r));
      const last = r.out.trim().split("\n").at(-1)!;
      return { r, json: JSON.parse(last) as Record<string, string>, argv: ["deno", ...argv] };
    };
    const built = (r: Result) => r.err.includes("building the cpu backend from source");

    const story = (what: string, got: string, r: Result, argv: string[]) =>
      assert.equal(got, REFERENCE.greedy_text, show(`${what}: not stories260k's story`, argv, r));

    await t.step(
      "negative: the local line without the first-run-only grants, empty cache",
      async () => {
        const argv = ["deno", "run", ...localLater, "main.ts", "local", model];
        const r = await spawn("deno", argv.slice(1));
        assert.notEqual(r.code, 0, show("expected a failure", argv, r));
        // It says what to grant (were a prebuilt pinned for this platform: its host's --allow-net).
        assert.match(r.err, /--allow-run=cc,gcc|needs --allow-net=/, show("no hint", argv, r));
      },
    );

    let local: Record<string, string> = {};
    await t.step("the local line, first run: builds the library; generate, q8_0", async () => {
      const { r, json, argv } = await program("local line", localLine, ["local", model]);
      local = json;
      assert.ok(built(r), show("the first run did not build the library", argv, r));
      story("local", json.story, r, argv);
      assert.match(json.continuation, /^Once upon a time\b.{10,}/s, show("prompt", argv, r));
      assert.match(json.q8Story, /^Once upon a time/, show("q8_0: no story", argv, r));
      const splits = [...Deno.readDirSync(model)].map((e) => e.name)
        .filter((n) => n.startsWith("rabbitllm_split_")).sort();
      assert.equal(splits.length, 2, `splits in ${model}: ${splits}`);
      for (const s of splits) assert.ok(Deno.statSync(`${model}/${s}/manifest.json`).isFile, s);
    });

    await t.step("the local line without the first-run-only grants: reuses the cache", async () => {
      const { r, json, argv } = await program("local line, later", localLater, ["local", model]);
      assert.ok(!built(r), show("a later run built the library again", argv, r));
      assert.deepEqual(json, local);
    });

    await t.step(
      "negative control: the same without --allow-ffi fails with NotCapable",
      async () => {
        const grants = localLater.filter((f) => !f.startsWith("--allow-ffi"));
        assert.notDeepEqual(grants, localLater);
        const argv = ["deno", "run", ...grants, "main.ts", "local", model];
        const r = await spawn("deno", argv.slice(1));
        assert.notEqual(r.code, 0, show("expected a failure", argv, r));
        assert.match(r.err, /NotCapable/, show("not NotCapable", argv, r));
        assert.match(r.err, /--allow-ffi/, show("not naming --allow-ffi", argv, r));
      },
    );

    await t.step("the hub line: a hub id from the (fake) hub, its chat template", async () => {
      const { json, argv, r } = await program("hub line", hubLine, ["hub", HUB_REPO]);
      story("hub", json.story, r, argv);
      assert.equal(json.chat, "<|user|>Hi\n<|assistant|>");
      assert.ok(hub.requests.some((q) => q.server === "cdn"), "the weights came through the CDN");
      // Later runs, without the first-run-only grants: the snapshot is resolved again.
      const later = await program("hub line, later", hubLater, ["hub", HUB_REPO]);
      assert.ok(!built(later.r), show("a later run built the library", later.argv, later.r));
      assert.deepEqual(later.json, json);
    });

    await t.step(
      "the CLI, installed with the install line: pull, list, run, generate",
      async () => {
        const root = `${tmp}/install`;
        const install = ["install", "-g", "-n", "rabbit", "--root", root, ...cliLine];
        install.push(`${pkgUrl}cli.ts`);
        const ri = await spawn("deno", install);
        assert.equal(ri.code, 0, show("deno install failed", ["deno", ...install], ri));
        const rabbit = async (...args: string[]) => {
          const argv = ["sh", `${root}/bin/rabbit`, ...args];
          const r = await spawn("sh", argv.slice(1));
          assert.equal(r.code, 0, show(`rabbit ${args.join(" ")} failed`, argv, r));
          assert.ok(!built(r), show("the CLI built the library again", argv, r));
          return r;
        };
        await rabbit("pull", CLI_REPO);
        const list = await rabbit("list");
        assert.match(list.out, new RegExp(`^${CLI_REPO} `, "m"), list.out);
        assert.match(list.out, new RegExp(`^${HUB_REPO} `, "m"), list.out);
        const prompt = "Once upon a time";
        const want = local.continuation + "\n";
        const run = await rabbit("run", model, prompt, "-n", "20", "--temperature", "0", "-q");
        assert.equal(run.out, want);
        const gen = await rabbit(
          "generate",
          "--model",
          model,
          "--prompt",
          prompt,
          "-n",
          "20",
          "-q",
        );
        assert.equal(gen.out, want);
        const chat = await rabbit("run", CLI_REPO, "Hello", "-n", "8", "--temperature", "0", "-q");
        assert.ok(chat.out.trim().length > 0, chat.err);
        // The scoped local line is enough for the CLI on a checkpoint directory.
        const scoped = ["deno", "run", ...localLater, `${pkgUrl}cli.ts`, "generate"];
        scoped.push("--model", model, "--prompt", prompt, "-n", "20", "-q");
        const rs = await spawn("deno", scoped.slice(1));
        assert.equal(rs.code, 0, show("rabbit generate under the local line", scoped, rs));
        assert.equal(rs.out, want);
      },
    );
  } finally {
    await server.shutdown();
    await hub.close();
    await Deno.remove(tmp, { recursive: true });
    // What the children cached of the served modules (the port is not reused).
    for (const d of ["remote/http", "gen/http"]) {
      await Deno.remove(`${denoDir}/${d}/127.0.0.1_PORT${server.addr.port}`, { recursive: true })
        .catch(() => {});
    }
  }
});
