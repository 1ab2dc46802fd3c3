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
# built if missing), REGISTRY=0 (skips the registry part). Must run as root.
# Prints one line per run.
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

# --- type=registry and type=inline (issue 14, second part) ---
# Against a docker-registry on 127.0.0.1 with its storage in $T (every run uses
# repositories of its own, so nothing is skipped by a HEAD of an earlier run):
#   cold            machine A's build, no export
#   cold+reg-max    the same with --cache-to type=registry,ref=REF,mode=max
#   warm, warm+reg-max  machine A again, everything cached, without and with the
#                   same export (the usual CI case: the layers are in the registry)
#   push            machine A's build pushed (-t REF --push)
#   push+inline     the same with --cache-to type=inline
#   B-reg-max       machine B (fresh root) with --cache-from type=registry,ref=REF
#   B-inline        machine B with --cache-from IMAGE (the inline cache)
# and the overheads: cold+reg-max - cold, push+inline - push.
bench_registry() {
  command -v docker-registry >/dev/null || { echo "docker-registry is missing: install the docker-registry package" >&2; return 1; }
  local port cfg pid w i cold cmax warm wmax push pinl bmax binl r
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cfg=$T/registry.yml
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$T/registry" "$port" >"$cfg"
  docker-registry serve "$cfg" >"$T/registry.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  r=127.0.0.1:$port
  for w in ${WORKLOADS:-steps parallel}; do
    for i in $(seq "$N"); do
      fresh a; cold=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain "$W/$w")
      fresh a; cmax=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain --cache-to "type=registry,ref=$r/cache-$w-$i:max,mode=max" "$W/$w")
      warm=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain "$W/$w")
      wmax=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain --cache-to "type=registry,ref=$r/cache-$w-$i:max,mode=max" "$W/$w")
      fresh a; push=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain -t "$r/plain-$w-$i:1" --push "$W/$w")
      fresh a; pinl=$(timed env RBUILD_ROOT="$T/a" "$R" build --progress plain -t "$r/inline-$w-$i:1" --push --cache-to type=inline "$W/$w")
      fresh b; bmax=$(timed env RBUILD_ROOT="$T/b" "$R" build --progress plain --cache-from "type=registry,ref=$r/cache-$w-$i:max" "$W/$w")
      fresh b; binl=$(timed env RBUILD_ROOT="$T/b" "$R" build --progress plain --cache-from "$r/inline-$w-$i:1" "$W/$w")
      echo "$w run$i registry cold=${cold}s cold+reg-max=${cmax}s (+$(echo "$cmax - $cold" | bc)s) warm=${warm}s warm+reg-max=${wmax}s (+$(echo "$wmax - $warm" | bc)s) push=${push}s push+inline=${pinl}s (+$(echo "$pinl - $push" | bc)s) B-reg-max=${bmax}s B-inline=${binl}s"
    done
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
[ "${REGISTRY:-1}" = 0 ] || bench_registry
