#!/bin/bash
# Differential check against the reference: builds each case here with BuildKit
# (`DOCKER_BUILDKIT=1 docker build`, dockerd must be running and have no network
# needs: the base is ../../shared/conformance/base.sh imported as busybox:latest)
# and with rbuild, and compares the two images as the conformance harness does
# (shared/conformance/imgview.py: config and every path's type, mode, owner, size
# and content, against the base). Each case is a `make.sh` that writes a context
# (with its Dockerfile) into the current folder. A case may have a `case.conf`
# (sourced by bash) setting any of:
#   expect=failure     BuildKit must reject the build, and then rbuild must fail too
#   files=(NAME ...)   with expect=failure: Dockerfile.NAME each, instead of Dockerfile
#   args=(K=V ...)     --build-arg for both builders
#   target=STAGE       --target for both builders
#   pre=(FILE:TAG ...) Dockerfiles in the context built and tagged first (bases)
#
#   testdata/buildkit-diff/run.sh RBUILD [CASE...]
# Exit status 0 when every case matches; 77 when no BuildKit is reachable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rbuild=$(realpath "${1:?usage: run.sh RBUILD [CASE...]}")
shift
shared=${RBUILD_SHARED:-$here/../../../shared}
docker=${DOCKER:-/usr/bin/docker}
[ -x "$docker" ] && "$docker" info >/dev/null 2>&1 || { echo "buildkit-diff: no dockerd reachable, skipped"; exit 77; }
[ -f "$shared/conformance/imgview.py" ] || { echo "buildkit-diff: $shared/conformance not found, skipped"; exit 77; }
work=$(mktemp -d /tmp/rbuild-buildkit-diff.XXXXXX)
# RBUILD_DIFF_KEEP=1 keeps the work folder (logs, images, views) for a look.
[ -n "${RBUILD_DIFF_KEEP:-}" ] && echo "buildkit-diff: keeping $work" || trap 'rm -rf "$work"' EXIT
"$shared/conformance/base.sh" "$work/base.tar" >/dev/null
# Both builders start from the same base: (re)tag it as busybox:latest in docker.
"$docker" import "$work/base.tar" busybox:latest >/dev/null
"$docker" save busybox:latest -o "$work/bk-base.tar"
"$rbuild" --root "$work/root" import "$work/base.tar" busybox:latest >/dev/null
"$rbuild" --root "$work/root" save busybox:latest -o "$work/rb-base.tar"
view() { # ARCHIVE BASE: the comparable view, without the layer count
    python3 "$shared/conformance/imgview.py" "$1" --base "$2" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); d.pop("layers"); print(json.dumps(d, indent=1, sort_keys=True))'
}
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=($(cd "$here" && ls -d */ | tr -d /))
failed=0
for c in "${cases[@]}"; do
    ctx=$work/ctx-$c
    mkdir -p "$ctx"
    (cd "$ctx" && sh "$here/$c/make.sh")
    tag=rbuild-buildkit-diff-$c
    expect=success args=() target= pre=() files=()
    [ ! -f "$here/$c/case.conf" ] || . "$here/$c/case.conf"
    flags=(--network none)
    for a in ${args[@]+"${args[@]}"}; do flags+=(--build-arg "$a"); done
    [ -z "$target" ] || flags+=(--target "$target")
    for p in ${pre[@]+"${pre[@]}"}; do
        DOCKER_BUILDKIT=1 "$docker" build -q --network none -f "$ctx/${p%%:*}" -t "${p#*:}" "$ctx" >/dev/null 2>&1 &&
            "$rbuild" --root "$work/root" build --network none -f "$ctx/${p%%:*}" -t "${p#*:}" "$ctx" >/dev/null 2>&1 ||
            { echo "FAIL $c: the base ${p#*:} could not be built"; failed=1; continue 2; }
    done
    if [ "$expect" = failure ]; then
        [ ${#files[@]} -gt 0 ] || files=("")
        for f in "${files[@]}"; do
            df=$ctx/Dockerfile${f:+.$f} name=$c${f:+/$f}
            bk=0; DOCKER_BUILDKIT=1 "$docker" build -q "${flags[@]}" -f "$df" -t "$tag" "$ctx" >"$work/bk-$c.log" 2>&1 || bk=$?
            rb=0; "$rbuild" --root "$work/root" build --progress plain "${flags[@]}" -f "$df" -t "$tag" "$ctx" >"$work/rb-$c.log" 2>&1 || rb=$?
            "$docker" rmi -f "$tag" >/dev/null 2>&1 || true
            if [ $bk = 0 ]; then
                echo "FAIL $name: BuildKit built it, but the case expects a failure"; failed=1
            elif [ $rb = 0 ]; then
                echo "FAIL $name: BuildKit rejected it but rbuild built it:"; grep -v '^ *$' "$work/bk-$c.log" | tail -1; failed=1
            else
                echo "ok   $name (both fail; rbuild: $(grep -v '^ *$' "$work/rb-$c.log" | tail -1 | cut -c1-110))"
            fi
        done
        continue
    fi
    bk=0; DOCKER_BUILDKIT=1 "$docker" build -q "${flags[@]}" -t "$tag" "$ctx" >"$work/bk-$c.log" 2>&1 || bk=$?
    if [ $bk != 0 ]; then
        echo "FAIL $c: BuildKit could not build it:"; tail -5 "$work/bk-$c.log"; failed=1; continue
    fi
    "$docker" save "$tag" -o "$work/bk-$c.tar"
    "$docker" rmi -f "$tag" >/dev/null
    for p in ${pre[@]+"${pre[@]}"}; do "$docker" rmi -f "${p#*:}" >/dev/null 2>&1 || true; done
    if ! "$rbuild" --root "$work/root" build --progress plain "${flags[@]}" -t "$tag" "$ctx" >"$work/rb-$c.log" 2>&1; then
        echo "FAIL $c: rbuild could not build it:"; tail -5 "$work/rb-$c.log"; failed=1; continue
    fi
    "$rbuild" --root "$work/root" save "$tag" -o "$work/rb-$c.tar"
    view "$work/bk-$c.tar" "$work/bk-base.tar" >"$work/bk-$c.json"
    view "$work/rb-$c.tar" "$work/rb-base.tar" >"$work/rb-$c.json"
    if diff "$work/bk-$c.json" "$work/rb-$c.json" >"$work/diff-$c.txt"; then
        echo "ok   $c ($(grep -c '"/' "$work/rb-$c.json") paths)"
    else
        echo "FAIL $c: BuildKit (<) and rbuild (>) differ:"; head -20 "$work/diff-$c.txt"; failed=1
    fi
done
exit $failed
