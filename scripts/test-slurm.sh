#!/usr/bin/env bash
# A real one-node Slurm on this machine runs `advlens reproduce --profile quick` as the job graph
# of `reproduce --emit slurm` (E2 split into 3 array tasks), and the outputs are checked against a
# single-process run:
#   1. the merged adversarial set (shards + manifest.json) is byte-identical;
#   2. results.json is identical apart from timings (scripts/compare-results.py);
#   3. failure: one E2 array task is scancelled mid-run; the re-submitted graph redoes only that
#      shard (the other shards keep their inode and mtime, every other stage is cached) and the
#      outputs still match.
# Needs root (apt-get, munge key, daemons) and Debian's slurm-wlm and munge (installed here when
# missing). Stops the daemons it started on exit. Not part of .ci/run (see README, "Running on a
# cluster"): about 10 minutes on 2 cores.
#
# Usage: sudo scripts/test-slurm.sh [WORKDIR]   (default /tmp/advlens-slurm-test)
#   ADVLENS=path/to/advlens   binary to test (default: target/release/advlens, built if absent)
#   SLURM_TEST_TIMEOUT=900    seconds each graph may take to drain the queue
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${1:-/tmp/advlens-slurm-test}
timeout_s=${SLURM_TEST_TIMEOUT:-900}
t_start=$(date +%s)
log() { echo "[test-slurm $(($(date +%s) - t_start))s] $*"; }
fail() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (apt-get, munge key, slurm daemons)"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if [ -z "${ADVLENS:-}" ]; then
    [ -x target/release/advlens ] || cargo build --release
    ADVLENS=$repo/target/release/advlens
fi

rm -rf "$work"
mkdir -p "$work"/{bin,slurm/state,slurm/spool,munge}
cp "$ADVLENS" "$work/bin/advlens" # the jobs run this copy: a rebuild cannot change them
adv="$work/bin/advlens"
out="$work/run"

# ---- munge and a one-node slurm on localhost --------------------------------------------------
pids=()
stop_daemons() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
    [ ${#pids[@]} -eq 0 ] || log "daemons stopped"
}
trap stop_daemons EXIT
marker="# written by advlens scripts/test-slurm.sh"
if [ -e /etc/slurm/slurm.conf ] && ! grep -qxF "$marker" /etc/slurm/slurm.conf; then
    fail "/etc/slurm/slurm.conf exists and is not this script's: a Slurm is configured here already"
fi
for d in slurmctld slurmd munged; do
    if pgrep -x "$d" >/dev/null; then fail "$d is running already"; fi
done
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge "$work/munge"
chmod 400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged --pid-file="$work/munge/munged.pid"
sleep 0.5
pids+=("$(cat "$work/munge/munged.pid")")
munge -n | unmunge >/dev/null || fail "munge does not work"

host=$(hostname -s)
cpus=$(nproc)
mkdir -p /etc/slurm
cat >/etc/slurm/slurm.conf <<EOF
$marker
ClusterName=advlens-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# A job whose dependency can never be met (a cancelled array task) is cancelled, so the queue drains.
DependencyParameters=kill_invalid_depend
MinJobAge=3600
StateSaveLocation=$work/slurm/state
SlurmdSpoolDir=$work/slurm/spool
SlurmctldPidFile=$work/slurm/slurmctld.pid
SlurmdPidFile=$work/slurm/slurmd.pid
SlurmctldLogFile=$work/slurm/slurmctld.log
SlurmdLogFile=$work/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -i
sleep 1
pids+=("$(cat "$work/slurm/slurmctld.pid")")
slurmd
sleep 1
pids+=("$(cat "$work/slurm/slurmd.pid")")
for _ in $(seq 50); do
    sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed)' && break
    sleep 0.2
done
sinfo -h -o %T | grep -Eq '^(idle|mixed)' || fail "the node is not idle: $(sinfo)"
log "slurm up: node $host, $cpus CPUs ($(sinfo -V))"

# ---- helpers ---------------------------------------------------------------------------------
run_args=(--device cpu --seed 3 reproduce --profile quick --out "$out")
submit() { # submit the graph; job ids in $work/$1
    bash "$work/jobs/submit.sh" >"$work/$1"
    log "submitted $(wc -l <"$work/$1") jobs ($1)"
}
drain() { # wait until the queue is empty, within the time bound
    local t0 now
    t0=$(date +%s)
    while [ -n "$(squeue -h -o %i)" ]; do
        now=$(date +%s)
        [ $((now - t0)) -lt "$timeout_s" ] || fail "queue not drained after ${timeout_s}s: $(squeue)"
        sleep 1
    done
    log "queue drained in $(($(date +%s) - t0))s"
}
job_states() { # STAGE STATE per job (array tasks one line each)
    while read -r stage id; do
        scontrol show job -o "$id" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sed "s/^/$stage /"
    done <"$work/$1"
}
same_advset() { # the merged set in $out is byte-identical to the single-process one
    local f n=0
    cmp "$work/single/e2/adv/manifest.json" "$out/e2/adv/manifest.json" ||
        fail "manifest.json differs"
    for f in "$work"/single/e2/adv/adv-*.safetensors; do
        cmp "$f" "$out/e2/adv/$(basename "$f")" || fail "$(basename "$f") differs"
        n=$((n + 1))
    done
    [ "$n" -ge 3 ] || fail "only $n shards in the single-process set"
    log "adversarial set byte-identical: manifest.json + $n shards"
}
same_results() {
    python3 scripts/compare-results.py "$work/single/results.json" "$out/results.json" "$@" ||
        fail "results.json differs"
}

# ---- 1. the single-process reference --------------------------------------------------------
t0=$(date +%s)
"$adv" "${run_args[@]}" >"$work/single.log" 2>&1 || fail "single-process reproduce failed"
mv "$out" "$work/single" # same --out path for both runs, so paths in results.json agree
log "single-process reproduce --profile quick: $(($(date +%s) - t0))s"

# ---- 2. the job graph -----------------------------------------------------------------------
"$adv" "${run_args[@]}" --shards 3 --cpus-per-task 1 --time 00:30:00 --emit slurm "$work/jobs"
t0=$(date +%s)
submit ids-1
drain
job_states ids-1 >"$work/states-1"
bad=$(grep -vc ' COMPLETED$' "$work/states-1" || true)
[ "$bad" = 0 ] || fail "jobs not COMPLETED: $(grep -v ' COMPLETED$' "$work/states-1")"
log "graph 1: $(wc -l <"$work/states-1") jobs and array tasks COMPLETED in $(($(date +%s) - t0))s"
same_advset
same_results

# ---- 3. failure: cancel one E2 array task mid-run, re-submit ----------------------------------
rm -rf "$out/e2"
submit ids-2
arr=$(awk '$1 == "e2-parts" { print $2 }' "$work/ids-2")
caught=
for _ in $(seq 3000); do
    st=$(squeue -h -r -j "${arr}_2" -o %T 2>/dev/null || true)
    if [ "$st" = RUNNING ]; then
        scancel "${arr}_2"
        caught=1
        break
    fi
    [ -z "$st" ] && [ -e "$out/e2/adv/manifest-2-of-3.json" ] && break
    sleep 0.1
done
[ -n "$caught" ] || fail "array task ${arr}_2 finished before it could be cancelled"
log "cancelled E2 array task ${arr}_2 while RUNNING"
drain
[ ! -e "$out/e2/adv/manifest-2-of-3.json" ] || fail "the cancelled part left a manifest"
[ ! -e "$out/e2/stage.json" ] || fail "E2 was joined without part 2"
grep -q "e2 .*CANCELLED\|e2-parts .*CANCELLED" <(job_states ids-2) || fail "nothing was cancelled"
log "shards left after the cancel: $(cd "$out/e2/adv" && echo adv-*.safetensors)"
stamp() { stat -c '%n %i %Y.%y' "$out"/e2/adv/adv-*.safetensors; }
stamp >"$work/stamps-before"

t0=$(date +%s)
submit ids-3
drain
job_states ids-3 >"$work/states-3"
bad=$(grep -vc ' COMPLETED$' "$work/states-3" || true)
[ "$bad" = 0 ] || fail "re-submitted jobs not COMPLETED: $(grep -v ' COMPLETED$' "$work/states-3")"
log "graph 3 (re-submitted): all COMPLETED in $(($(date +%s) - t0))s"
stamp | grep -Ff "$work/stamps-before" | wc -l | grep -qx "$(wc -l <"$work/stamps-before")" ||
    fail "a shard that survived the cancel was rewritten"
python3 - "$out/e2/adv" <<'EOF' || fail "the re-submitted parts did more than the missing shard"
import json, sys
d = sys.argv[1]
r = [json.load(open(f"{d}/report-{k}-of-3.json")) for k in (1, 2, 3)]
w = [x["shards_written"] for x in r]
u = [x["shards_reused"] for x in r]
print(f"re-submitted E2 parts: shards written {w}, reused {u}")
sys.exit(0 if w == [0, 1, 0] and u == [1, 0, 1] else 1)
EOF
ran=$(cat "$work"/jobs/logs/*.out | grep -E '^reproduce: [^ ]+ \.\.\.$' | sort | uniq -c | awk '$1 > 1 { print $3 }')
log "stages run more than once over the three submissions: ${ran:-none}"
[ "$ran" = "e2" ] || fail "stages other than e2 ran again: $ran"
same_advset
same_results --ignore-e2-work
log "PASS ($(($(date +%s) - t_start))s in all)"
