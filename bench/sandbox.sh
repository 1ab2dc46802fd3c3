#!/usr/bin/env bash
# Sandbox benchmark: median wall time of running `true` in
#   - rbuild's sandbox alone (sandbox/examples/sandbox-run.rs, N runs in-process,
#     host network and network none),
#   - `rbuild run --rm busybox true` against the image store (the rootfs imported
#     with `rbuild import` into a temporary state root; the first, unpacking run is
#     not counted) and `rbuild run --rm --rootfs DIR true`,
#   - `buildah run` on a working container made from the same rootfs,
#   - `docker run --rm` on the same rootfs imported with `docker import` (never pulled),
# over the busybox rootfs of shared/conformance/base.sh. Needs root.
#   bench/sandbox.sh [RUNS]        (default 100; docker and buildah get RUNS/5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
slow_runs=$(( runs / 5 > 5 ? runs / 5 : 5 ))
base=../shared/conformance/base.sh
[ -f "$base" ] || base=/work/shared/conformance/base.sh
work=$(mktemp -d /tmp/rbuild-bench-sandbox.XXXXXX)
started_dockerd=
cleanup() {
  [ -n "${ctr:-}" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
  [ -n "$started_dockerd" ] && kill "$started_dockerd" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

sh "$base" "$work/base.tar"
mkdir "$work/root"
tar -C "$work/root" -xf "$work/base.tar"
chmod 755 "$work/root"

cargo build -q --release -p rbuild-sandbox --example sandbox-run
bin=target/release/examples/sandbox-run

echo "machine: $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rbuild sandbox, network host:  $("$bin" --bench "$runs" "$work/root")"
echo "rbuild sandbox, network none:  $(SANDBOX_NET=none "$bin" --bench "$runs" "$work/root")"

# median of the wall times (ms) of running "$@" slow_runs times (or $2 times)
median_of() {
  local times=() t0 t1
  for _ in $(seq "$slow_runs"); do
    t0=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "failed: $*"; return; }; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "runs=%d median_ms=%.3f min_ms=%.3f max_ms=%.3f\n", NR, a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'
}

cargo build -q --release -p rbuild
echo "rbuild run --rm --rootfs DIR true: $(median_of target/release/rbuild run --rm --rootfs "$work/root" true)"
export RBUILD_ROOT="$work/state"
target/release/rbuild import "$work/base.tar" busybox:latest >/dev/null
target/release/rbuild run --rm busybox true
echo "rbuild run --rm busybox true:   $(median_of target/release/rbuild run --rm busybox true)"
unset RBUILD_ROOT

if command -v buildah >/dev/null; then
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$work/base.tar" / >/dev/null
  echo "buildah run (isolation $(buildah info --format '{{.host.OCIRuntime}}' 2>/dev/null || echo oci)): $(median_of buildah run "$ctr" true)"
else
  echo "buildah: not installed"
fi

if command -v docker >/dev/null; then
  if ! docker info >/dev/null 2>&1 && command -v dockerd >/dev/null; then
    dockerd --bridge=none --iptables=false >"$work/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 50); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  if docker info >/dev/null 2>&1; then
    docker import "$work/base.tar" rbuild-bench-busybox:latest >/dev/null
    echo "docker run --rm:               $(median_of docker run --rm --network none rbuild-bench-busybox:latest true)"
  else
    echo "docker: daemon not available"
  fi
else
  echo "docker: not installed"
fi
