#!/bin/bash
# Build cache shared between machines (issue 14, first part: rbuild alone, type=local).
# Per workload of shared/bench-workloads (busybox base) and run, with fresh state roots
# that all load the same busybox base (so the image IDs can match):
#   cold          machine A's build, no cache export
#   cold+max/min  the same with --cache-to type=local,dest=DIR,mode=max|min
#   B-max/min     machine B (fresh root) from that cache with --cache-from
# and the size of the mode=max cache. The peers (BuildKit inline cache, buildah)
# and type=registry/inline come with the registry client.
#
#   bench/cache.sh [N]     N runs per workload (default 3)
#
# Env: WORKLOADS="steps parallel", RBUILD=path (default target/release/rbuild,
# built if missing). Must run as root. Prints one line per run.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
N=${1:-3}
W=$(cd "$REPO/../shared/bench-workloads" 2>/dev/null && pwd || echo /work/shared/bench-workloads)
[ -d "$W/steps" ] || { echo "bench-workloads are missing ($W)" >&2; exit 1; }
R=${RBUILD:-$REPO/target/release/rbuild}
[ -x "$R" ] || (cd "$REPO" && cargo build --release -p rbuild)
T=$(mktemp -d /var/tmp/rbuild-cache-bench.XXXXXX)
trap 'rm -rf "$T"' EXIT
sh "$REPO/testdata/examples/busybox-base.sh" "$T/base.tar" >/dev/null 2>&1
RBUILD_ROOT=$T/seed "$R" import "$T/base.tar" busybox:latest >/dev/null
RBUILD_ROOT=$T/seed "$R" save -o "$T/bb.tar" busybox:latest
fresh() { rm -rf "${T:?}/$1"; RBUILD_ROOT=$T/$1 "$R" load -q -i "$T/bb.tar" >/dev/null; }
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
for w in ${WORKLOADS:-steps parallel}; do
  for i in $(seq "$N"); do
    fresh a; cold=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain "$W/$w")
    fresh a; rm -rf "$T/max"
    cmax=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain --cache-to "type=local,dest=$T/max,mode=max" "$W/$w")
    fresh a; rm -rf "$T/min"
    cmin=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain --cache-to "type=local,dest=$T/min,mode=min" "$W/$w")
    fresh b; bmax=$(timed env RBUILD_ROOT="$T/b" "$R" build --progress plain --cache-from "type=local,src=$T/max" "$W/$w")
    fresh b; bmin=$(timed env RBUILD_ROOT="$T/b" "$R" build --progress plain --cache-from "type=local,src=$T/min" "$W/$w")
    echo "$w run$i cold=${cold}s cold+max=${cmax}s cold+min=${cmin}s B-max=${bmax}s B-min=${bmin}s max-size=$(du -sk "$T/max" | cut -f1)K"
  done
done
