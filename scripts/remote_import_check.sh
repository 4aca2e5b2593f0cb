#!/usr/bin/env bash
# The package as a user gets it: the files `deno publish --dry-run` lists, served over
# http://127.0.0.1:<port>/ (a remote module, like JSR: bare specifiers rewritten to deno.json's
# imports, as JSR does at publish), imported from a fresh folder with a fresh DENO_DIR and HOME and
# exactly the permissions README documents. Checks:
#   1. the first run builds the CPU backend into ~/.cache/rabbitllm/<version>/<os>-<arch>/ from
#      the sources fetched from the module's URL, and generates text;
#   2. a second run reuses the cache (no compiler ran);
#   3. a tampered cached library is rebuilt, never loaded, and text is printed;
#   4. `deno install -g` of the CLI from that URL, then `rabbit generate -m <stories> -n 8`.
# Needs deno, python3 and cc/gcc; npm packages come from the npm registry. Ends with one line
# "remote import: N passed, N failed"; exits 1 on any failure. Takes about a minute.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export NO_COLOR=1 RUST_BACKTRACE=0 DENO_NO_UPDATE_CHECK=1

passed=0
failed=0
check() { # check NAME COMMAND...: one line per check
  if "${@:2}"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
finish() {
  echo "remote import: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/rabbitllm-remote.XXXXXX")
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- the published files, served
pkg=$tmp/pkg
mkdir -p "$pkg"
files=$(deno publish --dry-run --allow-dirty 2>&1 | sed -nE "s|^ +file://$repo/(.*) \([0-9.]+[KMG]?B\)$|\1|p")
if [ -z "$files" ]; then
  echo "deno publish --dry-run listed no files"
  failed=1
  finish
fi
echo "serving $(wc -l <<<"$files") published files"
while IFS= read -r f; do
  mkdir -p "$pkg/$(dirname "$f")" && cp "$f" "$pkg/$f"
done <<<"$files"
# JSR rewrites bare specifiers mapped by deno.json's "imports" to their targets; so does this.
python3 - "$pkg" <<'EOF'
import json, pathlib, re, sys
root = pathlib.Path(sys.argv[1])
imports = json.loads((root / "deno.json").read_text()).get("imports", {})
for f in root.rglob("*.ts"):
    text = f.read_text()
    new = re.sub(r'''(\bfrom\s*|\bimport\s*\(\s*)(["'])([^"']+)\2''',
                 lambda m: m.group(1) + m.group(2) + imports.get(m.group(3), m.group(3)) + m.group(2), text)
    if new != text:
        f.write_text(new)
EOF
python3 - "$pkg" >"$tmp/port" 2>"$tmp/server.log" <<'EOF' &
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".ts": "application/typescript", ".json": "application/json"}
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=sys.argv[1]))
print(srv.server_address[1], flush=True)
srv.serve_forever()
EOF
server=$!
for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
port=$(cat "$tmp/port")
url=http://127.0.0.1:$port
echo "serving $pkg at $url"

# --- a fresh user: HOME, DENO_DIR, a folder without deno.json, the model copied
export HOME=$tmp/home DENO_DIR=$tmp/deno_dir
unset XDG_CACHE_HOME RABBITLLM_LIB RABBITLLM_CUDA_LIB RABBITLLM_LIB_URL RABBITLLM_LIB_SHA256 DENO_CERT
mkdir -p "$HOME" "$tmp/app" "$tmp/stories"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  cp "models/stories260k/$f" "$tmp/stories/"
done
stories=$tmp/stories
cache=$HOME/.cache/rabbitllm
lib=$cache/$(sed -nE 's/.*PACKAGE_VERSION = "(.*)";/\1/p' ffi/native_sources.ts)/$(deno eval -p 'Deno.build.os + "-" + Deno.build.arch')/librabbitllm_cpu.so
cat >"$tmp/app/main.ts" <<EOF
import { AutoModel } from "$url/mod.ts";
await using model = await AutoModel.fromPretrained(Deno.args[0]);
const ids = await model.generate(["Once upon a time"], { maxNewTokens: 16 });
console.log(model.tokenizer!.decode(ids[0], { skipSpecialTokens: true }));
EOF

# The README's permission line ("From JSR"), with jsr.io replaced by the local server.
perms=(
  "--allow-import=127.0.0.1:$port" "--allow-net=127.0.0.1:$port"
  "--allow-read=$cache,$stories" "--allow-write=$cache,$stories" "--allow-ffi=$cache"
  "--allow-run=cc,gcc"
  "--allow-env=XDG_CACHE_HOME,HOME,CC,RABBITLLM_LIB,RABBITLLM_LIB_URL,RABBITLLM_LIB_SHA256,HF_HUB_CACHE,HF_HOME,HF_TOKEN,HF_HUB_OFFLINE,HF_ENDPOINT"
  "--allow-sys=systemMemoryInfo"
)

run_app() { # run_app TAG: out in $tmp/TAG.out, stderr in $tmp/TAG.err, seconds in $tmp/TAG.time
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$tmp/app" && deno run "${perms[@]}" main.ts "$stories") >"$tmp/$1.out" 2>"$tmp/$1.err"
  local rc=$?
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.1f}')" >"$tmp/$1.time"
  echo "  run $1: exit $rc in $(cat "$tmp/$1.time") s; stdout: $(head -c 200 "$tmp/$1.out" | tr '\n' ' ')"
  grep '^rabbitllm: ' "$tmp/$1.err" | cut -c1-160 | sed 's/^/    /'
  if [ "$rc" -ne 0 ]; then sed 's/^/    stderr: /' "$tmp/$1.err" | tail -30; fi
  return "$rc"
}
story() { grep -q "Once upon a time" "$tmp/$1.out" && [ "$(wc -w <"$tmp/$1.out")" -gt 5 ]; }
built() { grep -q "rabbitllm: building the cpu backend from source" "$tmp/$1.err"; }

run_app first
check "first run: exits 0" test $? -eq 0
check "first run: prints a story" story first
check "first run: compiled the sources it fetched into the cache" built first
check "first run: the library and its sha256 record are in the cache" test -f "$lib" -a -f "$lib.json"

run_app second
check "second run: exits 0 and prints a story" story second
check "second run: reuses the cache (no compiler ran)" eval '! built second'

python3 - "$lib" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0xFF
open(p, "wb").write(b)
EOF
run_app tampered
check "tampered library: exits 0 and prints a story" story tampered
check "tampered library: named and rebuilt" eval 'grep -q "does not match the recorded one" "$tmp/tampered.err" && built tampered'

# --- the CLI, installed from the URL
(deno install -g -n rabbit --root "$tmp/inst" "${perms[@]}" "$url/cli.ts") >"$tmp/install.log" 2>&1
check "deno install -g the CLI from $url/cli.ts" test $? -eq 0 || sed 's/^/    /' "$tmp/install.log" | tail -20
t0=$(date +%s.%N)
(cd "$tmp/app" && "$tmp/inst/bin/rabbit" generate -m "$stories" -n 8 --prompt "Once") >"$tmp/cli.out" 2>"$tmp/cli.err"
rc=$?
echo "  rabbit generate: exit $rc in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s; stdout: $(head -c 200 "$tmp/cli.out" | tr '\n' ' ')"
[ "$rc" -eq 0 ] || sed 's/^/    stderr: /' "$tmp/cli.err" | tail -30
check "rabbit generate -m <stories> -n 8 --prompt Once: prints text" eval '[ $rc -eq 0 ] && grep -q "Once" "$tmp/cli.out"'
check "rabbit generate: reused the cache" eval '! grep -q "building the cpu backend" "$tmp/cli.err"'

# The demo model is not published: without --model the CLI must say so, not fail on a bogus path.
(cd "$tmp/app" && "$tmp/inst/bin/rabbit" generate -n 8 --prompt "Once") >"$tmp/nomodel.out" 2>"$tmp/nomodel.err"
rc=$?
echo "  rabbit generate without --model: exit $rc; stderr: $(head -c 300 "$tmp/nomodel.err" | tr '\n' ' ')"
check "rabbit generate without --model: a clear error naming --model" eval '[ $rc -ne 0 ] && grep -q -- "--model" "$tmp/nomodel.err"'

echo "times (s): first $(cat "$tmp/first.time"), second $(cat "$tmp/second.time"), tampered $(cat "$tmp/tampered.time")"
finish
