/**
 * Runs the `rabbit` CLI in-process for tests (tests/cli_test.ts, tests/cli_cache_test.ts): its
 * output, errors and exit code, with lines typed on stdin.
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
