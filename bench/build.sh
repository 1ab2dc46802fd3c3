#!/bin/bash
# Build benchmark (issue 5): rbuild against BuildKit and buildah on the workloads of
# shared/bench-workloads, --network none: steps, parallel, bigctx and biglayer FROM the
# busybox base, dpkg FROM a Debian bookworm minbase (issue 12). With `net` among the
# workloads, rbuild alone builds steps with --network default and --network host
# (issue 12: the default network's cost per RUN step).
#
#   bench/build.sh [N]            N runs per figure (default 3; env N works too)
#
# Env: WORKLOADS="steps parallel bigctx biglayer dpkg net", PEERS="buildkit buildah"
#      CACHE=dir keeping dpkg's base tar and .debs between runs (default
#      /var/tmp/rbuild-bench-cache; made once with the network, by dpkg/gen.sh)
#      (set PEERS= to time rbuild alone), RBUILD=path (default: builds
#      target/release/rbuild), KEEP=1 keeps the work folder.
#
# Per run and builder: cold build (empty cache), no-op rebuild, rebuild after one
# context file changed, export to a docker-archive tarball. The medians of the N runs
# are printed per workload with the rbuild/BuildKit ratios and the issue's goals.
# Must run as root (sandbox, dockerd, buildah; it runs with --isolation oci, as chroot isolation refuses --network none).
{ # read whole before running: editing the file during a run changes nothing
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# bench/build.sh --table FILE: only print the tables of a results file
# (lines: builder, workload, phase, run, seconds; the last run leaves bench/last-build-results.tsv)
if [ "${1:-}" = --table ]; then TABLE_ONLY=${2:?usage: build.sh --table FILE}; fi
N=${1:-${N:-3}}
WORKLOADS=${WORKLOADS:-steps parallel bigctx biglayer dpkg net}
CACHE=${CACHE:-/var/tmp/rbuild-bench-cache}
PEERS=${PEERS-buildkit buildah}
REPO=$(dirname "$HERE")
SHARED=$(cd "$REPO/../shared" 2>/dev/null && pwd || echo /work/shared)
BW=$SHARED/bench-workloads
tables() {
    python3 - "$1" "$2" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
t = {}
for b, w, p, r, s in rows:
    t.setdefault((b, w, p), {})[r] = float(s)
# cold+export per run, for biglayer's goal
for (b, w, p), runs in list(t.items()):
    if p == "cold" and (b, w, "export") in t:
        ex = t[(b, w, "export")]
        t[(b, w, "cold+export")] = {r: runs[r] + ex[r] for r in runs if r in ex}
goals = {("steps", "cold"): 0.5, ("steps", "noop"): 0.25, ("parallel", "noop"): 0.25,
         ("bigctx", "noop"): 0.25, ("biglayer", "noop"): 0.25, ("bigctx", "cold"): 0.5,
         ("bigctx", "changed"): 0.5, ("parallel", "cold"): 0.9, ("biglayer", "cold+export"): 0.7,
         ("dpkg", "cold"): 0.8}
med = lambda b, w, p: st.median(t[(b, w, p)].values()) if t.get((b, w, p)) else None
fmt = lambda x: "—" if x is None else f"{x:.2f} s"
label = {"cold": "cold build", "noop": "no-op rebuild", "changed": "one file changed",
         "export": "export (docker-archive)", "cold+export": "cold + export"}
print(f"\nMedians of {sys.argv[2]} run(s), wall time; ratio = rbuild / BuildKit")
for w in dict.fromkeys(r[1] for r in rows if r[0] != "rbuild-net"):
    print(f"\n### {w}\n")
    print("| phase | rbuild | BuildKit | buildah | rbuild/BuildKit | goal | met |")
    print("|---|---|---|---|---|---|---|")
    for p in ["cold", "noop", "changed", "export", "cold+export"]:
        a, k, h = med("rbuild", w, p), med("buildkit", w, p), med("buildah", w, p)
        ratio = a / k if a is not None and k else None
        g = goals.get((w, p))
        met = "" if g is None or ratio is None else ("yes" if ratio <= g else "**no**")
        print(f"| {label[p]} | {fmt(a)} | {fmt(k)} | {fmt(h)} | "
              f"{'—' if ratio is None else f'{ratio:.2f}'} | {'' if g is None else f'≤ {g}'} | {met} |")
# The default network's cost: rbuild builds of steps (10 RUN steps) per network mode.
nets = sorted({p for b, w, p, r, s in rows if b == "rbuild-net"})
if nets:
    print("\n### net (steps workload, rbuild alone, cold builds: 10 RUN steps)\n")
    print("| network | cold build | per RUN over host |")
    print("|---|---|---|")
    host = med("rbuild-net", "steps", "host")
    for p in nets:
        m = med("rbuild-net", "steps", p)
        extra = "" if host is None or p == "host" else f"{(m - host) / 10 * 1000:+.1f} ms (goal ≤ 20 ms)"
        print(f"| {p} | {fmt(m)} | {extra} |")
PY
}
if [ -n "${TABLE_ONLY:-}" ]; then tables "$TABLE_ONLY" "?"; exit 0; fi
[ -d "$BW" ] || { echo "build.sh: $BW not found" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root" >&2; exit 1; }

if [ -z "${RBUILD:-}" ]; then
    (cd "$REPO" && cargo build --release -q -p rbuild)
    RBUILD=$REPO/target/release/rbuild
fi
DOCKER=/usr/bin/docker # Debian's 20.10 client: the v28 client on PATH has no buildx
export DOCKER_BUILDKIT=1

WORK=$(mktemp -d /var/tmp/rbuild-benchbuild.XXXXXX)
LOG=$WORK/logs
mkdir -p "$LOG"
cp "$RBUILD" "$WORK/rbuild" # a rebuild of the binary during the run changes nothing
RBUILD=$WORK/rbuild
RES=$HERE/last-build-results.tsv # written as it goes: a cut-short run keeps its figures
: >"$RES"
cleanup() {
    if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
# Deleting big trees between timed runs slows the next builder down on these
# machines: their root file system is ext4 without a journal, where the inode
# allocator skips every inode freed in the last 60 s (more while its inode table
# block is dirty; kernel: ialloc.c recently_deleted()), so creating 20,000 files
# after deleting 40,000 costs seconds (perf: find_inode_bit / recently_deleted
# at 60 % of a COPY's time). So rbuild's and buildah's state folders are moved
# aside and deleted at the end, and before each cold build the bench waits
# SETTLE seconds (bigctx only; default 65), so that no builder pays for what
# was deleted before it (BuildKit's `builder prune`, which must delete; the
# intermediate containers buildah's `bud` deletes; whatever ran before).
TRASH=$WORK/trash
mkdir -p "$TRASH"
discard() { [ -e "$1" ] && mv "$1" "$TRASH/$(date +%s%N)" || true; }
settle() { # WORKLOAD
    if [ "$1" = bigctx ] && [ "${SETTLE:-65}" != 0 ]; then sync; sleep "${SETTLE:-65}"; fi
}
trap cleanup EXIT
echo "work folder: $WORK  (N=$N, load: $(cut -d' ' -f1-3 /proc/loadavg))"

now() { date +%s.%N; }
# timed BUILDER WORKLOAD PHASE RUN CMD...: runs CMD, appends its wall time to results
timed() {
    local b=$1 w=$2 p=$3 r=$4 t0 t1
    shift 4
    t0=$(now)
    if "$@" >"$LOG/$b-$w-$p-$r.log" 2>&1; then
        t1=$(now)
        printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$w" "$p" "$r" "$(echo "$t1 - $t0" | bc)" >>"$RES"
        printf '  %-9s %-9s %-8s run %s: %6.2f s\n' "$b" "$w" "$p" "$r" "$(echo "$t1 - $t0" | bc)"
    else
        echo "  $b $w $p run $r FAILED (log: $LOG/$b-$w-$p-$r.log):" >&2
        tail -5 "$LOG/$b-$w-$p-$r.log" >&2
        KEEP=1
        return 1
    fi
}

# --- the base image -------------------------------------------------------------
"$SHARED/conformance/base.sh" "$WORK/base.tar"
BASEROOT=$WORK/rbuild-base
"$RBUILD" --root "$BASEROOT" import "$WORK/base.tar" busybox:latest >/dev/null
"$RBUILD" --root "$BASEROOT" save busybox:latest -o "$WORK/busybox-archive.tar"

have_buildkit=0 have_buildah=0
case " $PEERS " in *" buildkit "*)
    if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
        "$DOCKER" import "$WORK/base.tar" busybox:latest >/dev/null
        have_buildkit=1
    else
        echo "BuildKit: dockerd not reachable through $DOCKER (start: dockerd --bridge=none --iptables=false); skipped"
    fi ;;
esac
case " $PEERS " in *" buildah "*)
    if command -v buildah >/dev/null; then have_buildah=1; else echo "buildah not installed; skipped"; fi ;;
esac

# dpkg: a Debian base and the .debs, made once (network) and kept in $CACHE.
case " $WORKLOADS " in *" dpkg "*)
    mkdir -p "$CACHE/dpkg"
    if [ ! -f "$CACHE/debian-bookworm-rootfs.tar" ] || [ ! -d "$CACHE/dpkg/debs" ]; then
        sh "$BW/dpkg/gen.sh" "$CACHE/dpkg" "$CACHE/debian-bookworm-rootfs.tar"
    fi
    "$RBUILD" --root "$BASEROOT" import "$CACHE/debian-bookworm-rootfs.tar" debian:bookworm >/dev/null
    "$RBUILD" --root "$BASEROOT" save debian:bookworm -o "$WORK/debian-archive.tar"
    [ $have_buildkit = 1 ] && "$DOCKER" import "$CACHE/debian-bookworm-rootfs.tar" debian:bookworm >/dev/null
    ;;
esac

# --- one context copy per workload (the shared folder is read-only) -----------------
# changed file per workload: a file a COPY selects where there is one; parallel and
# biglayer select no context file, so there an unselected file changes (all cached).
changed_file() {
    case $1 in
        steps) echo f8.txt ;;
        bigctx) echo src/d100/f050.dat ;;
        *) echo unselected.txt ;;
    esac
}
for w in $WORKLOADS; do
    [ "$w" = net ] && continue # builds steps' context
    ctx=$WORK/ctx/$w
    mkdir -p "$ctx"
    cp -a "$BW/$w/." "$ctx/"
    if [ "$w" = dpkg ]; then cp -a "$CACHE/dpkg/debs" "$ctx/debs"; rm "$ctx/gen.sh"; fi
    if [ -f "$ctx/gen.sh" ]; then sh "$ctx/gen.sh"; rm "$ctx/gen.sh"; fi
    [ "$(changed_file "$w")" = unselected.txt ] && echo 0 >"$ctx/unselected.txt"
done
sync

# --- the builders -----------------------------------------------------------------
rb_run() { # WORKLOAD RUN
    local w=$1 r=$2 ctx=$WORK/ctx/$1 root=$WORK/rbuild-root
    discard "$root"
    "$RBUILD" --root "$root" import "$WORK/base.tar" busybox:latest >/dev/null
    [ "$w" = dpkg ] && "$RBUILD" --root "$root" load -i "$WORK/debian-archive.tar" >/dev/null
    local b=(--root "$root" build --progress plain --network none -t "bench-$w" -f "$ctx/Dockerfile" "$ctx")
    sync
    settle "$w"
    timed rbuild "$w" cold "$r" "$RBUILD" "${b[@]}"
    timed rbuild "$w" noop "$r" "$RBUILD" "${b[@]}"
    printf x >>"$ctx/$(changed_file "$w")"
    timed rbuild "$w" changed "$r" "$RBUILD" "${b[@]}"
    timed rbuild "$w" export "$r" "$RBUILD" --root "$root" save "bench-$w" -o "$WORK/out.tar"
    rm -f "$WORK/out.tar"
    discard "$root"
}

bk_run() {
    local w=$1 r=$2 ctx=$WORK/ctx/$1
    "$DOCKER" rmi -f "bench-$w" >/dev/null 2>&1 || true
    "$DOCKER" builder prune -af >/dev/null
    local b=(build --network none -t "bench-$w" -f "$ctx/Dockerfile" "$ctx")
    sync
    settle "$w"
    timed buildkit "$w" cold "$r" "$DOCKER" "${b[@]}"
    timed buildkit "$w" noop "$r" "$DOCKER" "${b[@]}"
    printf x >>"$ctx/$(changed_file "$w")"
    timed buildkit "$w" changed "$r" "$DOCKER" "${b[@]}"
    timed buildkit "$w" export "$r" "$DOCKER" save "bench-$w" -o "$WORK/out.tar"
    rm -f "$WORK/out.tar"
    "$DOCKER" rmi -f "bench-$w" >/dev/null 2>&1 || true
    "$DOCKER" builder prune -af >/dev/null
}

bh_run() {
    local w=$1 r=$2 ctx=$WORK/ctx/$1 st=$WORK/buildah
    local s=(--root "$st/root" --runroot "$st/run" --storage-driver overlay)
    [ -d "$st" ] && { buildah "${s[@]}" rm -a >/dev/null 2>&1 || true; discard "$st"; }
    buildah "${s[@]}" pull -q "docker-archive:$WORK/busybox-archive.tar" >/dev/null
    [ "$w" = dpkg ] && buildah "${s[@]}" pull -q "docker-archive:$WORK/debian-archive.tar" >/dev/null
    local b=("${s[@]}" bud --layers --isolation oci --network none --pull=never
        -t "bench-$w" -f "$ctx/Dockerfile" "$ctx")
    sync
    settle "$w"
    timed buildah "$w" cold "$r" buildah "${b[@]}"
    timed buildah "$w" noop "$r" buildah "${b[@]}"
    printf x >>"$ctx/$(changed_file "$w")"
    timed buildah "$w" changed "$r" buildah "${b[@]}"
    timed buildah "$w" export "$r" buildah "${s[@]}" push "bench-$w" "docker-archive:$WORK/out.tar:bench-$w:latest"
    rm -f "$WORK/out.tar"
    buildah "${s[@]}" rm -a >/dev/null 2>&1 || true
    mount | awk -v p="$st" 'index($3, p) == 1 {print $3}' | sort -r | xargs -r umount 2>/dev/null || true
    discard "$st"
}

# net: rbuild's cold build of steps per network mode (same context, fresh roots).
net_run() { # RUN
    local r=$1 ctx=$WORK/ctx/net root=$WORK/rbuild-net-root mode
    [ -d "$ctx" ] || { mkdir -p "$ctx"; cp -a "$BW/steps/." "$ctx/"; }
    for mode in host default none; do
        discard "$root"
        "$RBUILD" --root "$root" import "$WORK/base.tar" busybox:latest >/dev/null
        sync
        timed rbuild-net steps "$mode" "$r" "$RBUILD" --root "$root" build --progress plain \
            --network "$mode" -t bench-net -f "$ctx/Dockerfile" "$ctx"
    done
    discard "$root"
}

for w in $WORKLOADS; do
    echo "== $w"
    if [ "$w" = net ]; then
        for r in $(seq "$N"); do net_run "$r"; done
        continue
    fi
    for r in $(seq "$N"); do
        rb_run "$w" "$r"
        [ $have_buildkit = 1 ] && bk_run "$w" "$r"
        [ $have_buildah = 1 ] && bh_run "$w" "$r"
    done
done

# --- the tables ---------------------------------------------------------------------
tables "$RES" "$N"
exit
}
