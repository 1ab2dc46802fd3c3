#!/usr/bin/env bash
# Squash benchmark: the time `--squash` adds to a build, on the `steps` (40
# instructions, 31 small layers) and `bigctx` (COPY of 20,000 files, ~430 MB, then
# a RUN) workloads of ../shared/bench-workloads, with wall time and peak RSS
# (/usr/bin/time -v):
#
#   - cold build (empty store), then the no-op rebuild (every step cached);
#   - `build --squash` with every step cached: the squash itself (computed);
#   - `build --squash` again: the squash comes from its cache;
#   - `build --squash-all` (computed), and `image squash` of the built image;
#   - docker's classic builder with and without `--squash` (DOCKER_BUILDKIT=0),
#     when dockerd runs with --experimental (else said so and skipped). With
#     --private-dockerd, a dockerd of its own is started for that (experimental,
#     no bridge, no iptables, its own data root, exec root and socket under the
#     scratch dir) and stopped at the end; the shared dockerd is not touched.
#
#   bench/squash.sh [--private-dockerd]   (needs root, ~2 GB of free disk)
#
# Uses a release build of rbuild (cargo build --release -p rbuild).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/squash.sh builds with RUN steps: run it as root"; exit 1; }
wl=../shared/bench-workloads
[ -d "$wl/steps" ] || { echo "$wl is missing: the shared benchmark workloads are needed"; exit 1; }
cargo build --release -p rbuild >/dev/null 2>&1 || cargo build --release -p rbuild
rb=$PWD/target/release/rbuild
work=$(mktemp -d "${TMPDIR:-/tmp}/rbuild-squashbench.XXXXXX")
stamp=$$
dockerd_pid=
cleanup() {
  if [ -n "$dockerd_pid" ]; then
    local d=(docker -H "unix://$work/dockerd/sock")
    "${d[@]}" rmi -f $("${d[@]}" images -q) >/dev/null 2>&1 || true
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
  elif docker info >/dev/null 2>&1; then
    docker rmi -f "sqbench-$stamp-steps" "sqbench-$stamp-steps-sq" "sqbench-$stamp-bigctx" \
      "sqbench-$stamp-bigctx-sq" busybox-sqbench-$stamp >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
export RBUILD_ROOT=$work/root

t() { # t LABEL CMD... : run with /usr/bin/time -v, print wall time and peak RSS
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$work/time.log" >"$work/out.log" || { cat "$work/time.log" "$work/out.log"; exit 1; }
  local wall rss cpu
  wall=$(grep "Elapsed (wall clock)" "$work/time.log" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/time.log" | awk '{print $NF}')
  cpu=$(grep "Percent of CPU" "$work/time.log" | awk '{print $NF}')
  local note
  note=$(grep -h -E '^(squashed|nothing to squash)' "$work/time.log" "$work/out.log" | head -1 || true)
  printf '%-44s wall %-9s CPU %5s  peak RSS %5d MiB  %s\n' "$label" "$wall" "$cpu" "$((rss / 1024))" "$note"
}

if [ "${1:-}" = --private-dockerd ]; then
  mkdir -p "$work/dockerd"
  echo '{}' >"$work/dockerd/daemon.json"
  dockerd --config-file "$work/dockerd/daemon.json" --experimental --bridge=none \
    --iptables=false --ip6tables=false --data-root "$work/dockerd/root" \
    --exec-root "$work/dockerd/exec" --pidfile "$work/dockerd/pid" \
    -H "unix://$work/dockerd/sock" >"$work/dockerd/log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST=unix://$work/dockerd/sock
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
fi
sh testdata/examples/busybox-base.sh "$work/busybox.tar" >/dev/null
"$rb" import "$work/busybox.tar" busybox:latest >/dev/null
experimental=$(docker info --format '{{.ExperimentalBuild}}' 2>/dev/null || echo none)
if [ "$experimental" = true ]; then
  docker import "$work/busybox.tar" "busybox-sqbench-$stamp" >/dev/null
fi

for w in steps bigctx; do
  cp -r "$wl/$w" "$work/$w"
  rm -rf "$work/$w/src"
  [ -x "$work/$w/gen.sh" ] || [ ! -f "$work/$w/gen.sh" ] || chmod +x "$work/$w/gen.sh"
  [ -f "$work/$w/gen.sh" ] && sh "$work/$w/gen.sh"
  echo "== $w: $(cut -d' ' -f1-3 /proc/loadavg) load, $(nproc) CPUs"
  b=(build --network none --progress plain)
  t "rbuild build (cold)" "$rb" "${b[@]}" -t "$w" "$work/$w"
  t "rbuild build (no-op rebuild)" "$rb" "${b[@]}" -t "$w" "$work/$w"
  t "rbuild build --squash (steps cached)" "$rb" "${b[@]}" --squash -t "$w-sq" "$work/$w"
  t "rbuild build --squash (squash cached too)" "$rb" "${b[@]}" --squash -t "$w-sq" "$work/$w"
  t "rbuild build --squash-all (steps cached)" "$rb" "${b[@]}" --squash-all -t "$w-all" "$work/$w"
  t "rbuild image squash (above the base)" "$rb" image squash "$w" -t "$w-isq"
  t "rbuild image waste" "$rb" image waste "$w"
  if [ "$experimental" = true ]; then
    sed "s/^FROM busybox/FROM busybox-sqbench-$stamp/" "$work/$w/Dockerfile" >"$work/$w/Dockerfile.docker"
    t "docker classic build (cold)" env DOCKER_BUILDKIT=0 docker build -q --network none \
      -f "$work/$w/Dockerfile.docker" -t "sqbench-$stamp-$w" "$work/$w"
    t "docker classic build (no-op rebuild)" env DOCKER_BUILDKIT=0 docker build -q --network none \
      -f "$work/$w/Dockerfile.docker" -t "sqbench-$stamp-$w" "$work/$w"
    t "docker classic build --squash (steps cached)" env DOCKER_BUILDKIT=0 docker build -q \
      --squash --network none -f "$work/$w/Dockerfile.docker" -t "sqbench-$stamp-$w-sq" "$work/$w"
  else
    echo "(docker classic --squash: skipped, dockerd is not running with --experimental)"
  fi
  rm -rf "$work/$w"
  "$rb" rmi "$w" "$w-sq" "$w-all" "$w-isq" >/dev/null 2>&1 || true
  "$rb" builder prune -a -f >/dev/null 2>&1 || true
done
