#!/bin/sh
# The README's first command: import a busybox base, build this example, run it.
# Needs root (RUN steps use overlayfs and namespaces) and busybox-static; no network.
set -e
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)
rbuild=${RBUILD:-$top/target/release/rbuild}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/../busybox-base.sh" "$tmp/busybox.tar"
"$rbuild" import "$tmp/busybox.tar" busybox:latest >/dev/null
"$rbuild" build --progress plain -t hello "$here"
"$rbuild" run --rm hello
echo
echo "Built and ran hello. Run it again with: $rbuild run --rm hello"
echo "Look at it with: $rbuild images; $rbuild history hello; $rbuild save hello -o hello.tar"
