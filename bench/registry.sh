#!/usr/bin/env bash
# Registry benchmark: push and pull against a local plain-http docker-registry
# (127.0.0.1, temporary storage), rbuild against its peers doing the same work
# in the same run, with wall time and peak RSS (/usr/bin/time -v):
#
#   - a one-layer image of SIZE MiB (half random, half text, many files) and a
#     20-layer image (20 RUN steps of SIZE/40 MiB each, needs root to build);
#   - push of the image as built (layers compressed during the push): rbuild
#     push; skopeo copy docker-archive:… docker://…; docker push (after docker
#     load of the same archive, when dockerd is reachable);
#   - re-push of the unchanged image (rbuild);
#   - pull into an empty store (download, verify, unpack): rbuild pull; docker
#     pull (into dockerd's store, after docker rmi).
#
#   bench/registry.sh [SIZE_MIB]      (default 600; needs ~8x that in free disk)
#
# Uses a release build of rbuild (cargo build --release -p rbuild), or the
# binary $RBUILD names (to measure another build against the same peers).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-600}
command -v docker-registry >/dev/null || { echo "docker-registry is missing: apt-get install docker-registry"; exit 1; }
command -v skopeo >/dev/null || { echo "skopeo is missing: apt-get install skopeo"; exit 1; }
if [ -n "${RBUILD:-}" ]; then
  rb=$(realpath "$RBUILD")
else
  cargo build --release -p rbuild >/dev/null 2>&1 || cargo build --release -p rbuild
  rb=$PWD/target/release/rbuild
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/rbuild-regbench.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $reg
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
cleanup() {
  kill "$regpid" 2>/dev/null || true
  if docker info >/dev/null 2>&1; then
    docker rmi -f "$reg/dk-big:1" "$reg/dk-many:1" "$reg/big:1" "$reg/many:1" bench-big:1 bench-many:1 >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -fs "http://$reg/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
export RBUILD_ROOT=$work/root DOCKER_CONFIG=$work/docker-config

echo "== making a ${size_mib} MiB rootfs (half random, half text, many files)"
python3 - "$work/rootfs.tar" "$size_mib" <<'PY'
import os, sys, tarfile, io, random
out, mib = sys.argv[1], int(sys.argv[2])
half = mib * 1024 * 1024 // 2
rng = random.Random(42)
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
    def add(name, data):
        ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1600000000; ti.mode = 0o644
        tf.addfile(ti, io.BytesIO(data))
    done, i = 0, 0
    while done < half:
        n = min(half - done, rng.choice([64 << 10, 256 << 10, 1 << 20, 4 << 20]))
        add(f"bin/r{i // 100:03d}/f{i}", os.urandom(n)); done += n; i += 1
    done, j = 0, 0
    words = [b"alpha", b"beta", b"gamma", b"delta", b"layer", b"image", b"store", b"digest"]
    while done < half:
        n = min(half - done, rng.choice([4 << 10, 16 << 10, 64 << 10]))
        line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        add(f"usr/share/t{j // 200:03d}/doc{j}.txt", (line * (n // len(line) + 1))[:n]); done += n; j += 1
PY

t() { # t LABEL CMD... : run with /usr/bin/time -v, print wall time and peak RSS
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$work/time.log" >"$work/out.log" || { cat "$work/time.log" "$work/out.log"; exit 1; }
  local wall rss cpu
  wall=$(grep "Elapsed (wall clock)" "$work/time.log" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/time.log" | awk '{print $NF}')
  cpu=$(grep "Percent of CPU" "$work/time.log" | awk '{print $NF}')
  printf '%-48s wall %-9s CPU %5s  peak RSS %5d MiB\n' "$label" "$wall" "$cpu" "$((rss / 1024))"
  # wall as seconds ([h:]m:ss.ss), for the ratios of the summary
  last_s=$(echo "$wall" | awk -F: '{s=0; for (i=1;i<=NF;i++) s=s*60+$i; print s}')
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

"$rb" import "$work/rootfs.tar" bench-big:1 >/dev/null
many_layers=0
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$work/many"
  per=$((size_mib / 40)); [ "$per" -ge 1 ] || per=1
  sh testdata/examples/busybox-base.sh "$work/busybox.tar" >/dev/null
  "$rb" import "$work/busybox.tar" busybox:latest >/dev/null
  {
    echo "FROM busybox"
    for i in $(seq 1 19); do
      echo "RUN head -c $((per * 1048576)) /dev/urandom > /r$i && yes layer-$i | head -c $((per * 1048576)) > /t$i"
    done
  } >"$work/many/Dockerfile"
  "$rb" build -q -t bench-many:1 "$work/many" >/dev/null
  many_layers=1
fi

for img in big many; do
  [ "$img" = many ] && [ "$many_layers" = 0 ] && { echo "(20-layer image: building needs root, skipped)"; continue; }
  echo "== bench-$img: $(cut -d' ' -f1-3 /proc/loadavg) load, $(nproc) CPUs"
  "$rb" save -o "$work/$img.tar" "bench-$img:1"
  "$rb" tag "bench-$img:1" "$reg/$img:1"
  rm -rf "$RBUILD_ROOT/layer-sources"
  t "rbuild push (compresses)" "$rb" push "$reg/$img:1"
  rb_push=$last_s
  t "rbuild push again (unchanged)" "$rb" push "$reg/$img:1"
  t "skopeo copy docker-archive: -> docker://" skopeo copy -q --dest-tls-verify=false \
    "docker-archive:$work/$img.tar" "docker://$reg/sk-$img:1"
  sk_push=$last_s
  if docker info >/dev/null 2>&1; then
    docker load -i "$work/$img.tar" >/dev/null
    docker tag "bench-$img:1" "$reg/dk-$img:1"
    t "docker push (dockerd 127.0.0.0/8 insecure)" docker push -q "$reg/dk-$img:1"
  fi
  fresh=$work/pull-root-$img
  t "rbuild pull (empty store)" env RBUILD_ROOT="$fresh" "$rb" pull -q "$reg/$img:1"
  rm -rf "$fresh"
  if docker info >/dev/null 2>&1; then
    docker rmi -f "$reg/dk-$img:1" "bench-$img:1" >/dev/null 2>&1 || true
    t "docker pull (into dockerd's store)" docker pull -q "$reg/$img:1"
    docker rmi -f "$reg/$img:1" >/dev/null 2>&1 || true
  fi
  rm -f "$work/$img.tar"
  echo "   bench-$img: rbuild push / skopeo copy = $(ratio "$rb_push" "$sk_push") (goal <= 0.7; load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "(docker figures: client RSS only; dockerd does the work)"
