#!/bin/bash
# Cost of the build checks (issue 17), one command:
#
#   bench/checks.sh [N]     N runs per figure (default 5; env N works too)
#
# Env: RBUILD=path (default: builds target/release/rbuild), KEEP=1 keeps the work folder,
#      WORKLOADS="steps biglayer".
#
# 1. `rbuild check` on the steps workload (shared/bench-workloads/steps): median
#    wall time of N runs (goal: < 20 ms).
# 2. A cold build and a no-op rebuild of steps and of biglayer (one RUN writing a
#    ~600 MB layer, which the image rules read after the build), with the checks
#    (the default) and without (RBUILD_CHECKS=off), alternated run by run (and
#    which goes first), each cold build in a fresh state root; medians of wall
#    and CPU time and the difference.
# Must run as root (the builds use the sandbox).
{ # read whole before running
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
N=${1:-${N:-5}}
SHARED=$(cd "$REPO/../shared" 2>/dev/null && pwd || echo /work/shared)
BW=$SHARED/bench-workloads
[ -d "$BW/steps" ] || { echo "bench/checks.sh: $BW/steps is missing" >&2; exit 1; }
if [ -z "${RBUILD:-}" ]; then
    (cd "$REPO" && CARGO_INCREMENTAL=0 cargo build --release -p rbuild >&2)
    RBUILD=$REPO/target/release/rbuild
fi
WORK=$(mktemp -d /var/tmp/rbuild-bench-checks.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
RESULTS=$WORK/results.tsv
: > "$RESULTS"

# the busybox base, imported into every fresh root
sh "$SHARED/conformance/base.sh" "$WORK/base.tar" >/dev/null

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.4f}')" "$1" "$2"; }

echo "rbuild check on steps, $((N * 10)) runs" >&2
python3 - "$RBUILD" "$BW/steps" "$((N * 10))" >> "$RESULTS" <<'PY'
import subprocess, sys, time, resource
rb, ctx, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([rb, "check", ctx], stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"check\tsteps\tcheck\t{i + 1}\t{wall:.5f}\t{cpu:.5f}")
PY

build() { # mode workload phase run root
    local mode=$1 w=$2 phase=$3 run=$4 root=$5 env=()
    [ "$mode" = off ] && env=(RBUILD_CHECKS=off)
    env "${env[@]}" RBUILD_ROOT="$root" /usr/bin/time -o "$WORK/t" -f "%e %U %S" "$RBUILD" build \
        --network none --progress plain -t "bench-$w" "$BW/$w" > "$WORK/last.log" 2>&1 \
        || { cat "$WORK/last.log" >&2; exit 1; }
    read -r wall user sys < <(tail -n 1 "$WORK/t")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$w" "$phase" "$run" "$wall" "$(elapsed 0 "$(elapsed "-$user" "$sys")")" >> "$RESULTS"
}

for w in ${WORKLOADS:-steps biglayer}; do
    for i in $(seq "$N"); do
        # alternate which goes first, so neither gets the warmer (or colder) slot
        modes="on off"; [ $((i % 2)) = 0 ] && modes="off on"
        for mode in $modes; do
            root=$WORK/root-$w-$mode-$i
            RBUILD_ROOT=$root "$RBUILD" import "$WORK/base.tar" busybox:latest >/dev/null
            echo "$w run $i, checks $mode" >&2
            build "$mode" "$w" cold "$i" "$root"
            build "$mode" "$w" noop "$i" "$root"
            rm -rf "$root"
        done
    done
done

python3 - "$RESULTS" "$N" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
t, cpu = {}, {}
for mode, w, p, r, s, c in rows:
    t.setdefault((mode, w, p), []).append(float(s))
    cpu.setdefault((mode, w, p), []).append(float(c))
med = lambda d, k: st.median(d[k]) if k in d else None
c = med(t, ("check", "steps", "check"))
print(f"\nMedians of {sys.argv[2]} run(s); wall time, and CPU time (user+sys) of the rbuild process\n")
print(f"rbuild check on steps: {c*1000:.1f} ms wall (goal < 20 ms: {'met' if c < 0.020 else 'NOT met'}), "
      f"min {min(t[('check','steps','check')])*1000:.1f} ms, {len(t[('check','steps','check')])} runs; CPU {med(cpu, ('check','steps','check'))*1000:.1f} ms\n")
print("| workload | phase | wall, checks on | wall, off | difference | CPU on | CPU off |")
print("|---|---|---|---|---|---|---|")
for w in ["steps", "biglayer"]:
    for p in ["cold", "noop"]:
        on, off = med(t, ("on", w, p)), med(t, ("off", w, p))
        if on is None or off is None:
            continue
        pct = f"{(on-off)/off*100:+.1f} %" if off > 0 else "n/a"
        print(f"| {w} | {p} | {on:.3f} s | {off:.3f} s | {on-off:+.3f} s ({pct}) "
              f"| {med(cpu, ('on', w, p)):.2f} s | {med(cpu, ('off', w, p)):.2f} s |")
PY
}
