#!/bin/sh
# Makes a busybox root filesystem tarball from Debian's busybox-static, the base
# image every example builds FROM (no network needed):
#   busybox-base.sh OUT.tar && rbuild import OUT.tar busybox:latest
set -e
out=${1:?usage: busybox-base.sh OUT.tar}
bb=$(command -v busybox) || { echo "busybox-base.sh: install busybox-static first (apt-get install -y busybox-static)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp" "$root/home" "$root/var/tmp"
cp "$bb" "$root/bin/busybox"
for c in $("$root/bin/busybox" --list); do [ "$c" = busybox ] || ln -s busybox "$root/bin/$c"; done
printf 'root:x:0:0:root:/root:/bin/sh\nbin:x:1:1:bin:/bin:/bin/false\ndaemon:x:2:2:daemon:/sbin:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nbin:x:1:\ndaemon:x:2:\nnogroup:x:65534:\n' > "$root/etc/group"
chmod 1777 "$root/tmp" "$root/var/tmp"; chmod 700 "$root/root"
tar --sort=name --mtime=@1600000000 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$out" .
