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
