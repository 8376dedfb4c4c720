#!/usr/bin/env bash
# Fuzz smoke (issue 13 item 9; fuzz/README.md): every committed corpus file of fuzz/corpus/NAME/
# replayed through its target under plain `cargo test` (tests/fuzz_replay.rs, stable Rust, no
# cargo-fuzz), then, where cargo-fuzz is installed, a short real libFuzzer run of each target
# (ADVLENS_FUZZ_SECONDS each, default 5: 7 targets, about 40 s after the fuzz crate is built).
# The fuzz crate builds on the stable toolchain: RUSTC_BOOTSTRAP=1 for cargo-fuzz's -Z flags, no
# sanitizer (-s none: needs no sanitizer-built std), debug assertions and overflow checks on (-a).
# New inputs go to a temporary folder, never into the committed corpus; a crash input is kept
# under fuzz/artifacts/NAME/ and fails the script.
#   ADVLENS_FUZZ_REPLAY=0     skip the replay (scripts/test.sh already ran it in `cargo test`)
#   ADVLENS_FUZZ_LIBFUZZER=0  skip the libFuzzer runs even where cargo-fuzz is installed (the fuzz
#                             crate's first build is about 10 CPU-minutes: advlens again, in
#                             release with coverage instrumentation)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${ADVLENS_FUZZ_SECONDS:-5}
t0=$SECONDS

if [[ "${ADVLENS_FUZZ_REPLAY:-1}" != 0 ]]; then
  cargo test --quiet --test fuzz_replay
fi
if [[ "${ADVLENS_FUZZ_LIBFUZZER:-1}" == 0 ]]; then
  echo "fuzz-smoke: ADVLENS_FUZZ_LIBFUZZER=0: corpus replay only"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: cargo-fuzz is not installed (cargo install cargo-fuzz): corpus replay only"
  exit 0
fi
export RUSTC_BOOTSTRAP=1
b0=$SECONDS
cargo fuzz build --fuzz-dir fuzz -s none -a
echo "fuzz-smoke: fuzz crate built in $((SECONDS - b0)) s"
bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in $(cargo fuzz list --fuzz-dir fuzz); do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  log="$work/$t.log"
  if ! "$bin_dir/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz/artifacts/$t/" "$work/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz-smoke: $t FAILED (input kept under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  echo "fuzz-smoke: $t: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1)"
done
echo "fuzz-smoke: done in $((SECONDS - t0)) s"
