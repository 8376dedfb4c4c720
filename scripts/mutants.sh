#!/usr/bin/env bash
# Mutation testing of the code the paper's numbers come from (issue 14): cargo-mutants over the
# analyses, the attacks, the optimiser and the IDX reader, each against the test files that
# should catch it. Not part of CI: a full run takes about 2 hours on 2 cores.
#
#   bash scripts/mutants.sh            # all four groups
#   bash scripts/mutants.sh analysis   # one group: analysis | attack | optim | idx
#
# src/analysis/ yields 1,203 mutants (attack/methods.rs 76, nn/optim.rs 52, data/idx.rs 65),
# each an incremental rebuild of the crate plus its tests: about a minute at the test profile,
# 28 s at `mutants` with the crate-local ThinLTO pass, 5-7 s without it (Cargo.toml), so the
# analysis group takes 1.5-2 h on 2 cores. SHARD=K/N runs every N-th mutant (round-robin,
# shard K of N, 0-based), for a sample or to spread a run over machines. IN_PLACE=1 mutates this
# checkout instead of a copy (warm target dir; run it in a scratch worktree, never where you edit).
#
#   SHARD=0/25 IN_PLACE=1 bash scripts/mutants.sh analysis
#   ITERATE=1 IN_PLACE=1 bash scripts/mutants.sh analysis   # re-test only the last survivors
#
# Output: mutants.out/<group>/ (cargo-mutants' own folder: caught.txt, missed.txt, timeout.txt,
# unviable.txt). The score is (caught + timeouts) / (caught + timeouts + missed): a timeout is a
# mutant that made a loop never end, which the tests did notice. List each survivor in
# docs/mutation-testing.md as a missing test or as an equivalent mutant with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants

run() {  # group, then --file and target arguments
  local group=$1; shift
  echo "== cargo mutants: $group"
  local extra=()
  [[ -n ${SHARD:-} ]] && extra+=(--sharding round-robin --shard "$SHARD")
  [[ ${IN_PLACE:-0} == 1 ]] && extra+=(--in-place)
  # ITERATE=1: test only what the last run in the same output folder did not catch (after new
  # tests), keeping its record of the rest.
  [[ ${ITERATE:-0} == 1 ]] && extra+=(--iterate)
  # cargo-mutants writes DIR/mutants.out but does not create DIR.
  mkdir -p "mutants.out/$group"
  # Its exit status is non-zero whenever a mutant survives, so it cannot tell a finished run
  # from a broken one; the outcome file can.
  # The `mutants` profile (Cargo.toml: opt-level 1, no debug info, no local ThinLTO) and a
  # CPU-only build make the per-mutant rebuild several times cheaper than the test profile; none
  # of these files has CUDA code. The test targets go to every cargo call (-C): arguments after
  # `--` reach only `cargo test` itself, so the build step would otherwise compile and link all
  # 30 test targets for every mutant (16 s a mutant instead of 5).
  RUST_BACKTRACE=0 cargo mutants --output "mutants.out/$group" --timeout-multiplier 3 --profile mutants \
    --no-default-features "${extra[@]}" "$@" || true
  if [[ ! -f "mutants.out/$group/mutants.out/outcomes.json" ]]; then
    echo "$group: cargo-mutants wrote no outcomes (see its output above)" >&2
    return 1
  fi
  local c t m
  c=$(wc -l < "mutants.out/$group/mutants.out/caught.txt" 2>/dev/null || echo 0)
  t=$(wc -l < "mutants.out/$group/mutants.out/timeout.txt" 2>/dev/null || echo 0)
  m=$(wc -l < "mutants.out/$group/mutants.out/missed.txt" 2>/dev/null || echo 0)
  echo "$group: caught $c, timeouts $t, missed $m"
}

want=${1:-all}
if [[ $want == all || $want == analysis ]]; then
  # stats.rs is tested by its own unit tests (and the findings' in experiments/), the rest of
  # src/analysis/ by the two integration test files. Splitting them keeps the crate's unit-test
  # harness (a second compile of the whole crate, 6 s of conv tests) out of 1,000 of the 1,200
  # mutants.
  run analysis --file 'src/analysis/*.rs' --exclude src/analysis/stats.rs \
    -C --test=analysis -C --test=result_paths
  run stats --file src/analysis/stats.rs -C --lib -- -- analysis::stats experiments::
fi
if [[ $want == all || $want == attack ]]; then
  run attack --file src/attack/methods.rs -C --test=attack -C --test=result_paths -C --lib
fi
if [[ $want == all || $want == optim ]]; then
  run optim --file src/nn/optim.rs -C --test=nn -C --test=train -C --test=result_paths -C --lib
fi
if [[ $want == all || $want == idx ]]; then
  run idx --file src/data/idx.rs -C --lib -C --test=data -C --test=result_paths
fi
