#!/usr/bin/env bash
# Save/load benchmark for the image store: a ~1 GiB one-layer image (many files,
# half of the bytes incompressible), timed with peak RSS (/usr/bin/time -v), gzip
# export throughput against single-threaded gzip, and docker save/load beside it
# when dockerd is reachable.
#
#   bench/image.sh [SIZE_MIB]      (default 1024; needs ~5x that in free disk)
#
# Uses a release build of rbuild (cargo build --release -p rbuild).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release -p rbuild >/dev/null 2>&1 || cargo build --release -p rbuild
rb=$PWD/target/release/rbuild
work=$(mktemp -d "${TMPDIR:-/tmp}/rbuild-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export RBUILD_ROOT=$work/root

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
    # incompressible: 64 KiB .. 4 MiB files
    done, i = 0, 0
    while done < half:
        n = min(half - done, rng.choice([64 << 10, 256 << 10, 1 << 20, 4 << 20]))
        add(f"bin/r{i // 100:03d}/f{i}", os.urandom(n)); done += n; i += 1
    # compressible text: 4 KiB .. 64 KiB files
    done, j = 0, 0
    words = [b"alpha", b"beta", b"gamma", b"delta", b"layer", b"image", b"store", b"digest"]
    while done < half:
        n = min(half - done, rng.choice([4 << 10, 16 << 10, 64 << 10]))
        line = b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        add(f"usr/share/t{j // 200:03d}/doc{j}.txt", (line * (n // len(line) + 1))[:n]); done += n; j += 1
    print(f"{i + j} files", file=sys.stderr)
PY

t() { # t LABEL CMD... : run with /usr/bin/time -v, print wall time and peak RSS
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$work/time.log" >"$work/out.log" || { cat "$work/time.log" "$work/out.log"; exit 1; }
  local wall rss cpu
  wall=$(grep "Elapsed (wall clock)" "$work/time.log" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/time.log" | awk '{print $NF}')
  cpu=$(grep "Percent of CPU" "$work/time.log" | awk '{print $NF}')
  printf '%-42s wall %-9s CPU %5s  peak RSS %5d MiB\n' "$label" "$wall" "$cpu" "$((rss / 1024))"
}

echo "== rbuild ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
t "rbuild import" "$rb" import "$work/rootfs.tar" bench:1
t "rbuild save (uncompressed layers)" "$rb" save -o "$work/save.tar" bench:1
"$rb" rmi bench:1 >/dev/null
t "rbuild load" "$rb" load -i "$work/save.tar"
t "rbuild save --compression gzip" "$rb" save --compression gzip -o "$work/save-gz.tar" bench:1
t "rbuild save --compression gzip, 1 thread" env RBUILD_COMPRESS_THREADS=1 "$rb" save --compression gzip -o "$work/save-gz1.tar" bench:1
cmp -s "$work/save-gz.tar" "$work/save-gz1.tar" && echo "(gzip output identical with 1 and all threads)"
t "rbuild save --compression zstd" "$rb" save --compression zstd -o "$work/save-zst.tar" bench:1
"$rb" rmi bench:1 >/dev/null
t "rbuild load (gzip layers)" "$rb" load -i "$work/save-gz.tar"
layer=$(ls -S "$RBUILD_ROOT"/blobs/sha256/ | head -1)
t "gzip -6 single-threaded (same layer)" sh -c "gzip -6 -c '$RBUILD_ROOT/blobs/sha256/$layer' > '$work/layer.gz'"
ls -l "$work/save.tar" "$work/save-gz.tar" "$work/save-zst.tar" "$work/layer.gz" | awk '{printf "%-60s %12d bytes\n", $NF, $5}'

if docker info >/dev/null 2>&1; then
  echo "== docker ($(docker version --format '{{.Server.Version}}'))"
  docker rmi -f bench:1 >/dev/null 2>&1 || true
  t "docker load (rbuild's archive)" docker load -i "$work/save.tar"
  t "docker save" docker save -o "$work/docker.tar" bench:1
  docker rmi -f bench:1 >/dev/null 2>&1 || true
  echo "(docker's client RSS only; dockerd does the work)"
else
  echo "== docker: dockerd not reachable, skipped"
fi
