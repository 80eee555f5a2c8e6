#!/usr/bin/env bash
# Fuzz kiln's handling of untrusted input with cargo-fuzz/libFuzzer (docs/fuzzing.md).
#
#   hack/fuzz.sh regress [TARGET...]  each target over its committed corpus (fuzz/corpus/<target>),
#                                     then FUZZ_REGRESS_SECONDS (default 10) of fuzzing; `make test`
#   hack/fuzz.sh long [TARGET...]     FUZZ_SECONDS (default 300) of fuzzing per target, with a
#                                     corpus kept across runs in $KILN_CACHE/fuzz/corpus; `make fuzz`
#   hack/fuzz.sh build                build the targets only
#   hack/fuzz.sh list                 the targets
#
# Installs what it needs, idempotently: a C++ compiler (libfuzzer-sys compiles libFuzzer; Debian's
# g++ through hack/lib/apt.sh) and cargo-fuzz $CARGO_FUZZ_VERSION (`cargo install --locked` into
# $KILN_CACHE/cargo-fuzz). Builds go to $KILN_CACHE/fuzz/target (override: FUZZ_TARGET_DIR).
#
# Toolchain: stable Rust. With FUZZ_SANITIZER=none (the default) cargo-fuzz passes only stable
# flags (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, --cfg fuzzing,
# -Cdebug-assertions). FUZZ_SANITIZER=address needs -Zsanitizer=address, a nightly flag: the script
# then sets RUSTC_BOOTSTRAP=1 (and the first build is a full rebuild, as for any change of flags).
#
# A crash, a failed invariant (a panic), a timeout (-timeout, per input) or going over the memory
# limit (-rss_limit_mb, -malloc_limit_mb) fails the run; the input is saved in
# fuzz/artifacts/<target>/ (gitignored) and the exit status is non-zero. To keep it as a
# regression input: cp fuzz/artifacts/<target>/crash-… fuzz/corpus/<target>/ (docs/fuzzing.md).
set -euo pipefail

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HACK_DIR/.." && pwd)
# shellcheck source=hack/lib/apt.sh
source "$HACK_DIR/lib/apt.sh"

CARGO=${CARGO:-cargo}
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.2}
CARGO_FUZZ_ROOT=$KILN_CACHE/cargo-fuzz
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$KILN_CACHE/fuzz/target}
FUZZ_SECONDS=${FUZZ_SECONDS:-300}
FUZZ_REGRESS_SECONDS=${FUZZ_REGRESS_SECONDS:-10}
TRIPLE=x86_64-unknown-linux-gnu
TARGETS=(reference build_paths dockerignore context_upload)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

# libFuzzer options of a target: the largest input, and the limits that catch blow-ups.
fuzz_options() {
  local max_len
  case $1 in
    reference | build_paths) max_len=1024 ;;
    dockerignore) max_len=8192 ;;
    context_upload) max_len=20000 ;;
    *) kiln_die "unknown target $1 (targets: ${TARGETS[*]})" ;;
  esac
  local opts=(-max_len="$max_len" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=512
    -artifact_prefix="$ROOT/fuzz/artifacts/$1/" -print_final_stats=1)
  if [[ -f "$ROOT/fuzz/dicts/$1.dict" ]]; then
    opts+=(-dict="$ROOT/fuzz/dicts/$1.dict")
  fi
  printf '%s\n' "${opts[@]}"
}

ensure_tools() {
  command -v c++ >/dev/null 2>&1 || kiln_apt_ensure g++
  local have
  have=$("$CARGO_FUZZ_ROOT/bin/cargo-fuzz" --version 2>/dev/null || true)
  if [[ "$have" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    kiln_lock "$KILN_CACHE/cargo-fuzz.lock"
    have=$("$CARGO_FUZZ_ROOT/bin/cargo-fuzz" --version 2>/dev/null || true)
    if [[ "$have" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
      kiln_log "installing cargo-fuzz $CARGO_FUZZ_VERSION into $CARGO_FUZZ_ROOT"
      "$CARGO" install --locked --quiet --force --root "$CARGO_FUZZ_ROOT" \
        --version "$CARGO_FUZZ_VERSION" cargo-fuzz >&2
    fi
  fi
  export PATH=$CARGO_FUZZ_ROOT/bin:$PATH
}

build() {
  ensure_tools
  local env=(CARGO_TARGET_DIR="$FUZZ_TARGET_DIR")
  if [[ "$FUZZ_SANITIZER" != none ]]; then
    env+=(RUSTC_BOOTSTRAP=1)
  fi
  kiln_log "building the fuzz targets (sanitizer: $FUZZ_SANITIZER; a cold build takes ~20 min on 2 cores)"
  (cd "$ROOT" && env "${env[@]}" "$CARGO" fuzz build -s "$FUZZ_SANITIZER" >&2)
}

binary() {
  echo "$FUZZ_TARGET_DIR/$TRIPLE/release/$1"
}

# stat NAME LOG: a libFuzzer final statistic (-print_final_stats=1).
stat() {
  sed -n "s/^stat::$1: *//p" "$2" | tail -n 1
}

# run TARGET LOG ARGS...: one libFuzzer run; its output goes to LOG (and to stderr on failure).
run() {
  local target=$1 log=$2
  shift 2
  local opts
  mapfile -t opts < <(fuzz_options "$target")
  mkdir -p "$ROOT/fuzz/artifacts/$target"
  if ! "$(binary "$target")" "${opts[@]}" "$@" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    kiln_log "FAILED: $target (full log: $log; the input is in fuzz/artifacts/$target/)"
    return 1
  fi
}

regress() {
  local targets=("$@") failed=() target work
  ((${#targets[@]})) || targets=("${TARGETS[@]}")
  build
  local logs
  logs=$(mktemp -d)
  for target in "${targets[@]}"; do
    local corpus=$ROOT/fuzz/corpus/$target started=$SECONDS
    # 1. Every committed input, once.
    if ! run "$target" "$logs/$target-corpus.log" -runs=0 "$corpus"; then
      failed+=("$target")
      continue
    fi
    # 2. A short run from the committed corpus; what it finds goes to a scratch directory.
    work=$(mktemp -d)
    if ! run "$target" "$logs/$target-fuzz.log" -max_total_time="$FUZZ_REGRESS_SECONDS" "$work" "$corpus"; then
      failed+=("$target")
    else
      kiln_log "$target: $(find "$corpus" -type f | wc -l) corpus inputs ok, then $(stat number_of_executed_units "$logs/$target-fuzz.log") executions in ${FUZZ_REGRESS_SECONDS}s, no finding ($((SECONDS - started))s)"
    fi
    rm -rf "$work"
  done
  if ((${#failed[@]})); then
    kiln_die "fuzz regression failed: ${failed[*]} (logs in $logs; see docs/fuzzing.md)"
  fi
  rm -rf "$logs"
}

long() {
  local targets=("$@") failed=() target
  ((${#targets[@]})) || targets=("${TARGETS[@]}")
  build
  local logs=$KILN_CACHE/fuzz/logs
  mkdir -p "$logs"
  printf '%-16s %12s %8s %8s %8s %s\n' target executions exec/s new-units peak-MB findings >&2
  for target in "${targets[@]}"; do
    local work=$KILN_CACHE/fuzz/corpus/$target log=$logs/$target.log findings=none
    mkdir -p "$work"
    touch "$logs/$target.started"
    if ! run "$target" "$log" -max_total_time="$FUZZ_SECONDS" "$work" "$ROOT/fuzz/corpus/$target"; then
      failed+=("$target")
      findings=$(find "$ROOT/fuzz/artifacts/$target" -type f -newer "$logs/$target.started" | head -n 1)
      findings=${findings:-"failed (see $log)"}
    fi
    printf '%-16s %12s %8s %8s %8s %s\n' "$target" \
      "$(stat number_of_executed_units "$log")" "$(stat average_exec_per_sec "$log")" \
      "$(stat new_units_added "$log")" "$(stat peak_rss_mb "$log")" "$findings" >&2
  done
  kiln_log "logs in $logs; the grown corpus is in $KILN_CACHE/fuzz/corpus"
  if ((${#failed[@]})); then
    kiln_die "findings in: ${failed[*]} (inputs in fuzz/artifacts/; see docs/fuzzing.md)"
  fi
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    regress) regress "$@" ;;
    long) long "$@" ;;
    build) build ;;
    list) printf '%s\n' "${TARGETS[@]}" ;;
    *) usage ;;
  esac
}

main "$@"
