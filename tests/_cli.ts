/**
 * Runs the `rabbit` CLI in-process for tests (tests/cli_test.ts, tests/cli_cache_test.ts): its
 * output, errors and exit code, with lines typed on stdin. Also the chat model those tests and
 * tests/serve_test.ts use.
 */
import { main } from "../cli.ts";

/** `rabbit <args>` with `input` lines on stdin: exit code, stdout and stderr. */
export async function run(
  args: string[],
  input?: string[],
): Promise<{ code: number; out: string; err: string }> {
  let out = "", err = "";
  const code = await main(args, {
    out: (s) => out += s,
    err: (s) => err += s,
    input: input
      ? (async function* () {
        yield* input;
      })()
      : undefined,
  });
  return { code, out, err };
}

/**
 * `rabbit <args>` as a child process (`deno run cli.ts`) with the permissions the CLI needs for a
 * local model; stdout and stderr piped.
 */
export function cliProcess(args: string[], stdin: "piped" | "null" = "null"): Deno.Command {
  const root = new URL("..", import.meta.url).pathname;
  return new Deno.Command("deno", {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      `--allow-ffi=${root}build`,
      "--allow-sys=systemMemoryInfo",
      `${root}cli.ts`,
      ...args,
    ],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdin,
    stdout: "piped",
    stderr: "piped",
  });
}

/**
 * A temporary copy of the stories260k weights with a tokenizer that has a chat template (Llama-2
 * [INST], same vocab); the caller removes the directory.
 */
export async function chatModel(): Promise<string> {
  const root = new URL("..", import.meta.url).pathname;
  const dir = await Deno.makeTempDir({ prefix: "rabbit-chat-" });
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${root}models/stories260k/${f}`, `${dir}/${f}`);
  }
  const tok = `${root}tests/fixtures/tokenizers/llama_legacy`;
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${tok}/${f}`, `${dir}/${f}`);
  }
  return dir;
}
