#!/usr/bin/env bash
# The package works from npm: pack it, install the tarball into an empty project the way a user would, and run the
# CLI from there, offline, on the bundled model.
#
#   1. npm pack; the tarball must stay under PACK_CHECK_MAX_MB (default 100) and hold no tests, benchmarks, build
#      folders, prepared graphs or source maps, and its JavaScript must not reach into test/.
#   2. npm install <tarball> into an empty folder, set up as a user must (docs/onnx-export.md §8): on linux-x64,
#      onnxruntime-node's postinstall fetches CUDA provider binaries from NuGet, outside the npm registry, and an
#      offline install fails on it; npm (10, and 11 unless `strict-allow-scripts`) runs it. The consumer's .npmrc
#      says onnxruntime-node-install=skip (the script then exits at once) and its package.json denies that script
#      in allowScripts (npm 11 then skips it). divbind-native's own install script runs and builds the addon.
#   3. With no network (a fresh network namespace, where `unshare` works): `divbind-native info`, which must describe
#      the bundled model without error, then `divbind-native generate "a red circle" --steps 5` on it, which must
#      write a PNG. While models/shapes-sd is missing (a failure of its own), the same generate also runs on a copy of
#      the tiny test model passed with --model, to show whether the rest of the path works.
# With DIVBIND_REQUIRE_NATIVE=1 (as in .ci/run), the installed package must load its C++ addon.
#
# Prints the tarball size, the install time and each step's result; exits 1 if any step failed.
# Usage: scripts/pack-check.sh [--keep]   (--keep leaves the temporary folder for inspection)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MAX_MB=${PACK_CHECK_MAX_MB:-100}
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

WORK=$(mktemp -d "${TMPDIR:-/tmp}/divbind-pack-check.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then echo "pack-check: kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

failures=()
fail() { echo "pack-check: FAIL: $*"; failures+=("$*"); }
ok() { echo "pack-check: ok: $*"; }

# Runs a command without network access when this machine allows a private network namespace (root, or user
# namespaces enabled); otherwise runs it as is and says so once.
OFFLINE=()
if unshare -n true 2>/dev/null; then
  OFFLINE=(unshare -n)
elif unshare -rn true 2>/dev/null; then
  OFFLINE=(unshare -rn)
else
  echo "pack-check: note: cannot create a network namespace here; the CLI runs with the network reachable"
fi

# ---- 1. pack
bundled_model=1
if [ ! -f models/shapes-sd/model_index.json ]; then
  bundled_model=0
  fail "models/shapes-sd is absent: the package ships no default model, so 'generate' without --model cannot work"
fi
pack_json=$(npm pack --json --pack-destination "$WORK" 2>"$WORK/pack.log") || {
  cat "$WORK/pack.log"
  fail "npm pack failed"
  exit 1
}
tarball="$WORK/$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(0, "utf8"))[0].filename)' <<<"$pack_json")"
bytes=$(stat -c %s "$tarball")
unpacked=$(node -e 'process.stdout.write(String(JSON.parse(require("fs").readFileSync(0, "utf8"))[0].unpackedSize))' <<<"$pack_json")
entries=$(tar tzf "$tarball" | wc -l)
echo "pack-check: tarball $(basename "$tarball"): $bytes bytes ($((bytes / 1024)) KiB), unpacked $unpacked bytes, $entries files"
if [ "$bytes" -gt $((MAX_MB * 1024 * 1024)) ]; then
  fail "tarball is $bytes bytes, over PACK_CHECK_MAX_MB=$MAX_MB MiB"
fi
forbidden=$(tar tzf "$tarball" | grep -E '^package/(test|bench|tools|build[^/]*|node_modules|dist/test|dist/bench|native/test|native/cuda/test|native/cuda/dev)/|/unet/divbind/|\.map$' || true)
if [ -n "$forbidden" ]; then
  fail "the tarball holds files a user does not need:"
  echo "$forbidden" | head -20 | sed 's/^/    /'
else
  ok "tarball holds no tests, benchmarks, build folders, prepared graphs or source maps"
fi
mkdir -p "$WORK/unpacked"
tar xzf "$tarball" -C "$WORK/unpacked"
reach=$(grep -rnE "['\"/]test['\"/]" "$WORK/unpacked/package/dist" --include='*.js' | grep -v '^\s*//' || true)
if [ -n "$reach" ]; then
  fail "the shipped JavaScript refers to test/ (run time must not reach into test/):"
  echo "$reach" | head -10 | sed 's/^/    /'
else
  ok "the shipped JavaScript does not refer to test/"
fi

# ---- 2. install into an empty project
consumer="$WORK/consumer"
mkdir -p "$consumer"
(
  cd "$consumer" && npm init -y >/dev/null && printf 'onnxruntime-node-install=skip\n' >.npmrc &&
    node -e "const f='package.json',p=JSON.parse(require('fs').readFileSync(f));p.allowScripts={'onnxruntime-node':false};require('fs').writeFileSync(f,JSON.stringify(p,null,2))"
)
start=$(date +%s.%N)
if (cd "$consumer" && npm install --no-audit --no-fund --foreground-scripts "$tarball" >"$WORK/install.log" 2>&1); then
  seconds=$(node -e "console.log(($(date +%s.%N) - $start).toFixed(1))")
  ok "npm install of the tarball took $seconds s"
  grep -E 'divbind-native:' "$WORK/install.log" | sed 's/^/    /'
else
  tail -30 "$WORK/install.log"
  fail "npm install of the tarball failed"
  exit 1
fi
ort_cuda=$(find "$consumer/node_modules/onnxruntime-node" -name 'libonnxruntime_providers_cuda.so' 2>/dev/null | head -1)
[ -z "$ort_cuda" ] && ok "onnxruntime-node downloaded nothing (no CUDA provider binaries)" ||
  fail "onnxruntime-node's postinstall downloaded $ort_cuda"
backends=$(cd "$consumer" && "${OFFLINE[@]}" node -e "console.log(require('divbind-native').availableBackends().join(', '))" 2>&1)
echo "pack-check: loss backends available in the installed package: $backends"
if [ "${DIVBIND_REQUIRE_NATIVE:-}" = 1 ] && ! grep -qw native <<<"$backends"; then
  fail "DIVBIND_REQUIRE_NATIVE=1 but the installed package does not load its C++ addon"
fi

# ---- 3. the CLI, offline
run_cli() { (cd "$consumer" && "${OFFLINE[@]}" npx --no-install divbind-native "$@"); }
if run_cli info --json >"$WORK/info.json" 2>"$WORK/info.err"; then
  model_error=$(node -e 'const i = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); process.stdout.write(i.model?.error ?? "")' "$WORK/info.json" 2>&1)
  if [ -z "$model_error" ]; then
    ok "npx divbind-native info describes the bundled model"
  else
    fail "npx divbind-native info exits 0 but reports for the default model: $model_error"
  fi
else
  fail "npx divbind-native info exited $? ($(grep -v '^npm warn' "$WORK/info.err" | tail -3 | tr '\n' ' '))"
fi

# generate TAG LABEL [ARGS...]: "a red circle", 5 steps, into a fresh folder; a PNG must come out.
generate() {
  local tag=$1 label=$2
  shift 2
  local out="$WORK/out-$tag" log="$WORK/generate-$tag.log" start seconds png
  start=$(date +%s.%N)
  if run_cli generate "a red circle" --steps 5 --out "$out" "$@" >"$log" 2>&1; then
    seconds=$(node -e "console.log(($(date +%s.%N) - $start).toFixed(1))")
    png=$(find "$out" -name '*.png' | head -1)
    if [ -n "$png" ] && [ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; then
      ok "npx divbind-native generate \"a red circle\" --steps 5 ($label) wrote $(basename "$png") in $seconds s"
      return 0
    fi
    echo "pack-check: generate ($label) exited 0 but wrote no PNG in $out"
  else
    echo "pack-check: generate ($label) exited $?:"
    grep -v '^npm warn' "$log" | tail -5 | sed 's/^/    /'
  fi
  return 1
}
generate bundled "bundled model" || fail "generate on the bundled model"
if [ "$bundled_model" = 0 ]; then
  cp -r test/fixtures/models/tiny-sd "$WORK/stand-in-model"
  rm -rf "$WORK/stand-in-model/unet/divbind"
  if generate stand-in "--model <copy of the tiny test model> --prepare" --model "$WORK/stand-in-model" --prepare; then
    echo "pack-check: note: given a model, the installed package generates; what is missing is the bundled model"
  else
    fail "generate on a copy of the tiny test model (stand-in for the missing bundled model)"
  fi
fi

if [ ${#failures[@]} -gt 0 ]; then
  echo "pack-check: ${#failures[@]} failed"
  exit 1
fi
echo "pack-check: all passed"
