#!/bin/bash
# Build cache shared between machines (issue 14): the farm scenario. Machine A
# builds and exports its cache; machine B, fresh, builds the same from it. rbuild
# against BuildKit (dockerd 20.10, inline cache through a registry) and buildah
# (--layers --cache-to/--cache-from a registry) in the same run.
#
#   bench/cache.sh [N]     N runs per workload (default 3)
#   bench/cache.sh --table [RESULTS.tsv]   reprint the table of a run's raw times
#
# Per workload and run, each on fresh state:
#   rbuild    cold (A, no export); cold+max / cold+min (A with --cache-to
#             type=local,dest=DIR,mode=max|min); B-max / B-min (B, a fresh root
#             with the same base loaded, --cache-from type=local,src=DIR)
#   rbuild-reg (when the binary has type=registry and type=inline) cold;
#             cold+reg-max (--cache-to type=registry,ref=REF,mode=max); push (-t REF
#             --push); push+inline (the same with --cache-to type=inline); B-reg-max
#             (--cache-from type=registry,ref=REF); B-inline (--cache-from IMAGE)
#   buildkit  cold (A: `docker builder prune -af` + `docker rmi` first); cold+inline
#             (the same with --build-arg BUILDKIT_INLINE_CACHE=1); push (of that
#             image to the registry); B-inline (prune and rmi again, then
#             --cache-from REF: machine B)
#   buildah   cold (A, fresh --root, --layers); cold+cacheto (with --cache-to
#             REG/REPO); B (fresh --root, --cache-from REG/REPO)
# Workloads (WORKLOADS=, default "steps parallel dpkg"): steps and parallel from
# shared/bench-workloads on the busybox base; dpkg (realistic: dpkg -i of the ~130
# packages of gcc, libc6-dev and make on Debian bookworm, offline) when its base and
# .debs are in $CACHE (see bench/build.sh; default /var/tmp/rbuild-bench-cache).
# mounts (rbuild alone: BuildKit cannot export cache mounts): a RUN whose cache mount
# holds ~50 MB that is slow to make (gzip of random bytes) and is made only when
# missing; B builds with another ARG value, so the RUN runs: with cache-mounts=true
# on both flags B finds the mount seeded, without it B makes it again.
# Every builder runs with --network none. The base images are imported under names of
# this script's own (cachebench-busybox, cachebench-debian; the contexts' FROM lines
# are rewritten), so nothing of other users of dockerd is touched but its build cache
# (`builder prune -af`, which BuildKit's cold start needs) and this script's images.
# The registry is a docker-registry of this script on 127.0.0.1 (dockerd treats
# 127.0.0.0/8 as insecure), stopped at the end.
#
# Env: PEERS="buildkit buildah", RBUILD=path (default target/release/rbuild, built if
# missing), RBUILD_REGISTRY=path (the binary of the registry and inline variant;
# default RBUILD; skipped when it has no type=registry), VARIANTS="local registry"
# (rbuild's), CACHE=dir, RESULTS=file (default bench/last-cache-results.tsv). Must run as root. Raw times go to bench/last-cache-results.tsv.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
RES=${RESULTS:-$HERE/last-cache-results.tsv}

# --- the table: medians, overheads and ratios -----------------------------------
table() {
    python3 - "$1" <<'EOF'
import sys, statistics, collections
t = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, w, p, r, s = line.rstrip("\n").split("\t")
    t[(b, w, p)].append(float(s))
def med(b, w, p):
    v = t.get((b, w, p))
    return statistics.median(v) if v else None
def f(x):
    return "—" if x is None else f"{x:.2f} s"
def d(a, b):
    return None if a is None or b is None else a - b
def ratio(a, b):
    return "—" if a is None or not b else f"{a / b:.2f}"
order = ["steps", "parallel", "dpkg"]
ws = sorted({w for _, w, _ in t if w != "mounts"}, key=lambda w: order.index(w) if w in order else 9)
n = max((len(v) for v in t.values()), default=0)
print(f"Medians of {n} runs. Overhead = cold with the export − cold without.")
print()
if ws:
    print("| workload | builder | A cold | A export overhead | B from the cache | B / A cold |")
    print("|---|---|---|---|---|---|")
    for w in ws:
        rc = med("rbuild", w, "cold")
        for label, p, bp in [("rbuild mode=max", "cold+max", "B-max"), ("rbuild mode=min", "cold+min", "B-min")]:
            if rc is None:
                break
            print(f"| {w} | {label} | {f(rc)} | {f(d(med('rbuild', w, p), rc))} | {f(med('rbuild', w, bp))} | {ratio(med('rbuild', w, bp), rc)} |")
        gc = med("rbuild-reg", w, "cold")
        if gc is not None:
            print(f"| {w} | rbuild registry mode=max | {f(gc)} | {f(d(med('rbuild-reg', w, 'cold+reg-max'), gc))} | {f(med('rbuild-reg', w, 'B-reg-max'))} | {ratio(med('rbuild-reg', w, 'B-reg-max'), gc)} |")
            push = med("rbuild-reg", w, "push")
            print(f"| {w} | rbuild inline | {f(gc)} | {f(d(med('rbuild-reg', w, 'push+inline'), push))} (over a push of {f(push)}) | {f(med('rbuild-reg', w, 'B-inline'))} | {ratio(med('rbuild-reg', w, 'B-inline'), gc)} |")
        kc = med("buildkit", w, "cold")
        if kc is not None:
            push = med("buildkit", w, "push")
            print(f"| {w} | BuildKit inline | {f(kc)} | {f(d(med('buildkit', w, 'cold+inline'), kc))} (+ push {f(push)}) | {f(med('buildkit', w, 'B-inline'))} | {ratio(med('buildkit', w, 'B-inline'), kc)} |")
        hc = med("buildah", w, "cold")
        if hc is not None or med("buildah", w, "failed") is not None:
            print(f"| {w} | buildah | {f(hc)} | {f(d(med('buildah', w, 'cold+cacheto'), hc))} | {f(med('buildah', w, 'B'))} | {ratio(med('buildah', w, 'B'), hc)} |")
if any(w == "mounts" for _, w, _ in t):
    print()
    print("Cache mounts (rbuild alone; B's RUN runs, with another ARG value):")
    print()
    print("| A cold+max | A cold+max, cache-mounts=true | mounts export overhead | B (mount made again) | B (mount seeded) |")
    print("|---|---|---|---|---|")
    a, am = med("rbuild", "mounts", "cold+max"), med("rbuild", "mounts", "cold+max+mounts")
    print(f"| {f(a)} | {f(am)} | {f(d(am, a))} | {f(med('rbuild', 'mounts', 'B-max'))} | {f(med('rbuild', 'mounts', 'B-max+mounts'))} |")
if ws:
    print()
    print("| workload | B: rbuild local max / BuildKit | B: rbuild local min / BuildKit | B: rbuild inline / BuildKit inline | B: rbuild registry max / BuildKit | B: rbuild local max / buildah | inline export overhead: rbuild − BuildKit |")
    print("|---|---|---|---|---|---|---|")
    for w in ws:
        kb = med("buildkit", w, "B-inline")
        hb = med("buildah", w, "B")
        kc = med("buildkit", w, "cold")
        rc = med("rbuild", w, "cold")
        ko = d(med("buildkit", w, "cold+inline"), kc)
        ri = d(med("rbuild-reg", w, "push+inline"), med("rbuild-reg", w, "push"))
        print(f"| {w} | {ratio(med('rbuild', w, 'B-max'), kb)} | {ratio(med('rbuild', w, 'B-min'), kb)} | {ratio(med('rbuild-reg', w, 'B-inline'), kb)} | {ratio(med('rbuild-reg', w, 'B-reg-max'), kb)} | {ratio(med('rbuild', w, 'B-max'), hb)} | {f(d(ri, ko))} |")
EOF
}
if [ "${1:-}" = --table ]; then table "${2:-$RES}"; exit 0; fi

N=${1:-3}
[ "$(id -u)" = 0 ] || { echo "cache.sh: run as root" >&2; exit 1; }
W=$(cd "$REPO/../shared/bench-workloads" 2>/dev/null && pwd || echo /work/shared/bench-workloads)
[ -d "$W/steps" ] || { echo "bench-workloads are missing ($W)" >&2; exit 1; }
CACHE=${CACHE:-/var/tmp/rbuild-bench-cache}
WORKLOADS=${WORKLOADS-steps parallel dpkg mounts}
PEERS=${PEERS-buildkit buildah}
VARIANTS=${VARIANTS-local registry}
R=${RBUILD:-$REPO/target/release/rbuild}
[ -x "$R" ] || (cd "$REPO" && cargo build --release -q -p rbuild)
DOCKER=/usr/bin/docker # Debian's 20.10 client (the v28 client on PATH has no buildx)
export DOCKER_BUILDKIT=1

T=$(mktemp -d /var/tmp/rbuild-cache-bench.XXXXXX)
REG_PID=
cleanup() {
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
    if [ "${have_buildkit:-0}" = 1 ]; then
        for w in $WORKLOADS; do
            "$DOCKER" rmi -f "cachebench-$w" "$REG/cachebench-$w:latest" >/dev/null 2>&1 || true
        done
        "$DOCKER" rmi -f cachebench-busybox:latest cachebench-debian:latest >/dev/null 2>&1 || true
    fi
    if [ "${KEEP:-}" = 1 ]; then echo "work folder kept: $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
LOG=$T/logs
mkdir -p "$LOG"
cp "$R" "$T/rbuild"
R=$T/rbuild
RR=$R
if [ -n "${RBUILD_REGISTRY:-}" ]; then cp "$RBUILD_REGISTRY" "$T/rbuild-reg"; RR=$T/rbuild-reg; fi
: >"$RES"
echo "work folder: $T  (N=$N, load: $(cut -d' ' -f1-3 /proc/loadavg))"

now() { date +%s.%N; }
# timed BUILDER WORKLOAD PHASE RUN CMD...: runs CMD, records its wall time
timed() {
    local b=$1 w=$2 p=$3 r=$4 t0 t1 s
    shift 4
    t0=$(now)
    if "$@" >"$LOG/$b-$w-$p-$r.log" 2>&1; then
        t1=$(now)
        s=$(echo "$t1 - $t0" | bc)
        printf '%s\t%s\t%s\t%s\t%s\n' "$b" "$w" "$p" "$r" "$s" >>"$RES"
        printf '  %-9s %-9s %-12s run %s: %6.2f s\n' "$b" "$w" "$p" "$r" "$s"
    else
        echo "  $b $w $p run $r FAILED (log: $LOG/$b-$w-$p-$r.log):" >&2
        tail -5 "$LOG/$b-$w-$p-$r.log" >&2
        KEEP=1
        return 1
    fi
}

# --- bases, contexts, registry --------------------------------------------------------
sh "$REPO/testdata/examples/busybox-base.sh" "$T/busybox.tar" >/dev/null 2>&1
"$R" --root "$T/seed" import "$T/busybox.tar" cachebench-busybox:latest >/dev/null
"$R" --root "$T/seed" save -o "$T/busybox-archive.tar" cachebench-busybox:latest
case " $WORKLOADS " in *" dpkg "*)
    if [ -f "$CACHE/debian-bookworm-rootfs.tar" ] && [ -d "$CACHE/dpkg/debs" ]; then
        "$R" --root "$T/seed" import "$CACHE/debian-bookworm-rootfs.tar" cachebench-debian:latest >/dev/null
        "$R" --root "$T/seed" save -o "$T/debian-archive.tar" cachebench-debian:latest
    else
        echo "dpkg: no base or .debs in $CACHE (run bench/build.sh with WORKLOADS=dpkg once, it needs the network); skipped"
        WORKLOADS=${WORKLOADS/dpkg/}
    fi ;;
esac
rm -rf "$T/seed"
mkdir -p "$T/ctx/mounts"
cat >"$T/ctx/mounts/Dockerfile" <<'EOF'
FROM cachebench-busybox
ARG N=1
RUN --mount=type=cache,id=bench-pkgs,target=/var/cache/pkgs \
    if [ ! -f /var/cache/pkgs/pkgs.gz ]; then head -c 50000000 /dev/urandom | gzip -6 > /var/cache/pkgs/pkgs.gz; fi \
    && echo "$N" > /n && ls -l /var/cache/pkgs > /listing
EOF
for w in $WORKLOADS; do
    ctx=$T/ctx/$w
    mkdir -p "$ctx"
    [ "$w" = mounts ] && continue
    cp -a "$W/$w/." "$ctx/"
    rm -f "$ctx/gen.sh"
    [ "$w" = dpkg ] && cp -a "$CACHE/dpkg/debs" "$ctx/debs"
    sed -i -e 's/^FROM busybox\b/FROM cachebench-busybox/' -e 's/^FROM debian:bookworm\b/FROM cachebench-debian/' "$ctx/Dockerfile"
done
base_of() { if [ "$1" = dpkg ]; then echo "$T/debian-archive.tar"; else echo "$T/busybox-archive.tar"; fi; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $T/registry
http:
  addr: $REG
EOF
docker-registry serve "$T/registry.yml" >"$LOG/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$REG/v2/" >/dev/null || { echo "the registry did not start (log: $LOG/registry.log)" >&2; exit 1; }

have_registry=0
mkdir -p "$T/probe-ctx"; echo 'FROM scratch' >"$T/probe-ctx/Dockerfile"
# A binary without the registry variant refuses the flag ("--cache-to: ...").
if ! "$RR" --root "$T/probe" build --cache-to "type=registry,ref=$REG/probe" "$T/probe-ctx" 2>&1 | grep -q -- '--cache-to:'; then
    have_registry=1
else
    echo "rbuild: $RR has no --cache-to type=registry; the registry and inline variant is skipped"
fi
rm -rf "$T/probe" "$T/probe-ctx"
have_buildkit=0 have_buildah=0
case " $PEERS " in *" buildkit "*)
    if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
        "$DOCKER" load -q -i "$T/busybox-archive.tar" >/dev/null
        case " $WORKLOADS " in *" dpkg "*) "$DOCKER" load -q -i "$T/debian-archive.tar" >/dev/null ;; esac
        have_buildkit=1
    else
        echo "BuildKit: dockerd not reachable through $DOCKER (start: nohup dockerd --bridge=none --iptables=false &); skipped"
    fi ;;
esac
case " $PEERS " in *" buildah "*)
    if command -v buildah >/dev/null; then have_buildah=1; else echo "buildah not installed; skipped"; fi ;;
esac
sync

# --- rbuild (type=local) ---------------------------------------------------------------
fresh() { # ROOT WORKLOAD [BINARY]: a fresh state root with the base loaded
    rm -rf "$1"
    "${3:-$R}" --root "$1" load -q -i "$(base_of "$2")" >/dev/null
}
rb_farm() { # WORKLOAD RUN
    local w=$1 r=$2 ctx=$T/ctx/$1
    local b=(build --progress plain --network none "$ctx")
    fresh "$T/a" "$w"; timed rbuild "$w" cold "$r" "$R" --root "$T/a" "${b[@]}"
    fresh "$T/a" "$w"; rm -rf "$T/max"
    timed rbuild "$w" cold+max "$r" "$R" --root "$T/a" "${b[@]}" --cache-to "type=local,dest=$T/max,mode=max"
    fresh "$T/a" "$w"; rm -rf "$T/min"
    timed rbuild "$w" cold+min "$r" "$R" --root "$T/a" "${b[@]}" --cache-to "type=local,dest=$T/min,mode=min"
    fresh "$T/b" "$w"
    timed rbuild "$w" B-max "$r" "$R" --root "$T/b" "${b[@]}" --cache-from "type=local,src=$T/max"
    fresh "$T/b" "$w"
    timed rbuild "$w" B-min "$r" "$R" --root "$T/b" "${b[@]}" --cache-from "type=local,src=$T/min"
    grep -q "^#.* CACHED" "$LOG/rbuild-$w-B-min-$r.log" || echo "  (rbuild B-min: no CACHED step in its log?)"
    echo "  rbuild    $w mode=max cache: $(du -sk "$T/max" | cut -f1) KiB, mode=min: $(du -sk "$T/min" | cut -f1) KiB"
    rm -rf "$T/a" "$T/b" "$T/max" "$T/min"
}

# --- rbuild (type=registry, type=inline) -------------------------------------------------
# Each run uses repositories of its own, so nothing is skipped by a HEAD of an earlier run.
rg_farm() { # WORKLOAD RUN
    local w=$1 r=$2 ctx=$T/ctx/$1 ref=$REG/rb-$1-$2
    local b=(build --progress plain --network none "$ctx")
    fresh "$T/a" "$w" "$RR"; timed rbuild-reg "$w" cold "$r" "$RR" --root "$T/a" "${b[@]}"
    fresh "$T/a" "$w" "$RR"
    timed rbuild-reg "$w" cold+reg-max "$r" "$RR" --root "$T/a" "${b[@]}" --cache-to "type=registry,ref=$ref-cache:max,mode=max"
    fresh "$T/a" "$w" "$RR"
    timed rbuild-reg "$w" push "$r" "$RR" --root "$T/a" "${b[@]}" -t "$ref-plain:1" --push
    fresh "$T/a" "$w" "$RR"
    timed rbuild-reg "$w" push+inline "$r" "$RR" --root "$T/a" "${b[@]}" -t "$ref-inline:1" --push --cache-to type=inline
    fresh "$T/b" "$w" "$RR"
    timed rbuild-reg "$w" B-reg-max "$r" "$RR" --root "$T/b" "${b[@]}" --cache-from "type=registry,ref=$ref-cache:max"
    fresh "$T/b" "$w" "$RR"
    timed rbuild-reg "$w" B-inline "$r" "$RR" --root "$T/b" "${b[@]}" --cache-from "$ref-inline:1"
    rm -rf "$T/a" "$T/b"
}

# --- BuildKit (dockerd 20.10, inline cache through the registry) -----------------------
bk_clean() { # WORKLOAD: machine A or B starts with no build cache and no result
    "$DOCKER" rmi -f "cachebench-$1" "$REG/cachebench-$1:latest" >/dev/null 2>&1 || true
    "$DOCKER" builder prune -af >/dev/null
}
bk_farm() { # WORKLOAD RUN
    local w=$1 r=$2 ctx=$T/ctx/$1 ref=$REG/cachebench-$1:latest
    local b=(build --progress plain --network none -f "$ctx/Dockerfile")
    bk_clean "$w"; sync
    timed buildkit "$w" cold "$r" "$DOCKER" "${b[@]}" -t "cachebench-$w" "$ctx"
    bk_clean "$w"; sync
    timed buildkit "$w" cold+inline "$r" "$DOCKER" "${b[@]}" --build-arg BUILDKIT_INLINE_CACHE=1 -t "$ref" "$ctx"
    timed buildkit "$w" push "$r" "$DOCKER" push "$ref"
    bk_clean "$w"; sync
    timed buildkit "$w" B-inline "$r" "$DOCKER" "${b[@]}" --cache-from "$ref" -t "$ref" "$ctx"
    local runs cached
    runs=$(grep -c '^#[0-9]* \[.*\] RUN\|^#[0-9]* \[.*\] COPY' "$LOG/buildkit-$w-B-inline-$r.log" || true)
    cached=$(grep -c '^#[0-9]* CACHED' "$LOG/buildkit-$w-B-inline-$r.log" || true)
    echo "  buildkit  $w B: $cached CACHED lines for $runs RUN/COPY steps"
    bk_clean "$w"
}

# --- buildah 1.28 (--layers, --cache-to/--cache-from a registry) -----------------------
bh_farm() { # WORKLOAD RUN
    local w=$1 r=$2 ctx=$T/ctx/$1 repo=$REG/bh-cache-$1
    bh() { buildah --root "$T/bh-$1/root" --runroot "$T/bh-$1/run" --storage-driver overlay "${@:2}"; }
    local b=(bud --layers --network none --pull=never --isolation oci --tls-verify=false -f "$ctx/Dockerfile" -t "cachebench-$w")
    local m
    for m in a b; do
        rm -rf "$T/bh-$m"
        bh "$m" pull -q "docker-archive:$(base_of "$w")" >/dev/null
    done
    sync
    if ! timed buildah "$w" cold "$r" bh a "${b[@]}" "$ctx"; then
        printf 'buildah\t%s\tfailed\t%s\t0\n' "$w" "$r" >>"$RES"
        return 0
    fi
    bh a rm -a >/dev/null 2>&1 || true
    bh a rmi -af >/dev/null 2>&1 || true
    rm -rf "$T/bh-a"; bh a pull -q "docker-archive:$(base_of "$w")" >/dev/null; sync
    if timed buildah "$w" cold+cacheto "$r" bh a "${b[@]}" --cache-to "$repo" "$ctx"; then
        timed buildah "$w" B "$r" bh b "${b[@]}" --cache-from "$repo" "$ctx" || true
        echo "  buildah   $w B: $(grep -c 'Using cache' "$LOG/buildah-$w-B-$r.log" || true) steps from the cache"
    else
        printf 'buildah\t%s\tfailed\t%s\t0\n' "$w" "$r" >>"$RES"
    fi
    bh a rm -a >/dev/null 2>&1 || true
    bh b rm -a >/dev/null 2>&1 || true
    rm -rf "$T/bh-a" "$T/bh-b"
}

# --- rbuild: cache mounts (cache-mounts=true) ---------------------------------------------
rb_mounts() { # RUN
    local w=mounts r=$1 ctx=$T/ctx/mounts
    local b=(build --progress plain --network none "$ctx")
    fresh "$T/a" "$w"; rm -rf "$T/max"
    timed rbuild "$w" cold+max "$r" "$R" --root "$T/a" "${b[@]}" --build-arg N=1 --cache-to "type=local,dest=$T/max,mode=max"
    fresh "$T/a" "$w"; rm -rf "$T/mnt"
    timed rbuild "$w" cold+max+mounts "$r" "$R" --root "$T/a" "${b[@]}" --build-arg N=1 --cache-to "type=local,dest=$T/mnt,mode=max,cache-mounts=true"
    fresh "$T/b" "$w"
    timed rbuild "$w" B-max "$r" "$R" --root "$T/b" "${b[@]}" --build-arg N=2 --cache-from "type=local,src=$T/max"
    fresh "$T/b" "$w"
    timed rbuild "$w" B-max+mounts "$r" "$R" --root "$T/b" "${b[@]}" --build-arg N=2 --cache-from "type=local,src=$T/mnt,cache-mounts=true"
    echo "  rbuild    mounts cache: $(du -sk "$T/max" | cut -f1) KiB, with the mount: $(du -sk "$T/mnt" | cut -f1) KiB"
    rm -rf "$T/a" "$T/b" "$T/max" "$T/mnt"
}

for w in $WORKLOADS; do
    for r in $(seq "$N"); do
        if [ "$w" = mounts ]; then
            case " $VARIANTS " in *" local "*) rb_mounts "$r" ;; esac
            continue
        fi
        case " $VARIANTS " in *" local "*) rb_farm "$w" "$r" ;; esac
        case " $VARIANTS " in *" registry "*) [ $have_registry = 1 ] && rg_farm "$w" "$r" ;; esac
        [ $have_buildkit = 1 ] && bk_farm "$w" "$r"
        [ $have_buildah = 1 ] && bh_farm "$w" "$r"
    done
done
echo
table "$RES"
