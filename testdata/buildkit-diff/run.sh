#!/bin/bash
# Differential check against the reference: builds each case here with BuildKit
# (`DOCKER_BUILDKIT=1 docker build`, dockerd must be running and have no network
# needs: the base is ../../shared/conformance/base.sh imported as busybox:latest)
# and with rbuild, and compares the two images as the conformance harness does
# (shared/conformance/imgview.py: config and every path's type, mode, owner, size
# and content, against the base). Each case is a `make.sh` that writes a context
# (with its Dockerfile) into the folder given as $1.
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
trap 'rm -rf "$work"' EXIT
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
    if ! DOCKER_BUILDKIT=1 "$docker" build -q --network none -t "$tag" "$ctx" >"$work/bk-$c.log" 2>&1; then
        echo "FAIL $c: BuildKit could not build it:"; tail -5 "$work/bk-$c.log"; failed=1; continue
    fi
    "$docker" save "$tag" -o "$work/bk-$c.tar"
    "$docker" rmi -f "$tag" >/dev/null
    if ! "$rbuild" --root "$work/root" build --progress plain --network none -t "$tag" "$ctx" >"$work/rb-$c.log" 2>&1; then
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
