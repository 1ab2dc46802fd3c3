#!/usr/bin/env bash
# Rootless benchmark: the `steps` workload (../shared/bench-workloads/steps, 40
# instructions FROM busybox, --network none) built
#   - by rbuild as root,
#   - by rbuild as `nobody` (setpriv), in the user namespace rbuild enters itself,
#   - by rbuild as `nobody` with the copying snapshotter (RBUILD_SNAPSHOTTER=copy:
#     what kernels without overlayfs in a user namespace get),
#   - by rootless buildah as `nobody` (`buildah bud --layers`, overlay storage in a
#     temp dir), and by buildah as root, for the same ratio on buildah's side,
#   - by rootless buildah as `nobody` with the vfs driver (buildah's copying
#     storage, the peer of rbuild's copying snapshotter),
# cold (a fresh state root / storage each run, the busybox base imported first and
# not timed) and as a no-op rebuild (everything cached). Prints the medians and
# the ratios nobody/root. Run as root (it becomes nobody with setpriv).
#   bench/rootless.sh [RUNS] [RBUILD_BINARY]   (default 5, target/debug/rbuild)
#
# Host files: unless `nobody` has subordinate ids, one line
# `nobody:1000000000:65536` is added to /etc/subuid and /etc/subgid for the run and
# removed when it ends (trap on EXIT). Everything else lives in a temp dir, removed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
rbuild=$(realpath "${2:-target/debug/rbuild}")
shared=${RBUILD_SHARED:-../shared}
[ -d "$shared/bench-workloads/steps" ] || shared=/work/shared
base=$shared/conformance/base.sh
[ "$(id -u)" = 0 ] || { echo "rootless.sh: run as root (it runs the nobody side with setpriv)"; exit 1; }
line="nobody:1000000000:65536"
added=()
work=$(mktemp -d /tmp/rbuild-bench-rootless.XXXXXX)
chmod 755 "$work"
cleanup() {
  for f in "${added[@]}"; do
    grep -vxF "$line" "$f" > "$f.rbuild-tmp" || true
    chmod 644 "$f.rbuild-tmp" && mv "$f.rbuild-tmp" "$f"
  done
  # buildah as root leaves its layer mounts in the host's namespace.
  if [ -d "$work/bh-root" ]; then
    buildah --root "$work/bh-root/root" --runroot "$work/bh-root/run" rmi -a -f >/dev/null 2>&1 || true
    findmnt -rn -o TARGET | grep "^$work/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
for f in /etc/subuid /etc/subgid; do
  if ! grep -qE '^(nobody|65534):' "$f" 2>/dev/null; then
    echo "$line" >> "$f"
    added+=("$f")
  fi
done

nobody() {
  setpriv --reuid=65534 --regid=65534 --clear-groups -- \
    env -i PATH="$PATH" HOME="$work/home" XDG_RUNTIME_DIR="$work/home/run" "$@"
}
mkdir -p "$work/home/run" && chmod 700 "$work/home/run" && chown -R 65534:65534 "$work/home"
if ! nobody test -x "$rbuild"; then cp "$rbuild" "$work/rbuild"; rbuild=$work/rbuild; fi
cp -r "$shared/bench-workloads/steps" "$work/steps"
chmod -R a+rX,u+w "$work/steps"
sh "$base" "$work/base.tar"
chmod 644 "$work/base.tar"

ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# run_side NAME AS(= root|nobody) SETUP BUILD: SETUP prepares a fresh store in $dir;
# BUILD builds; prints "cold_median rebuild_median" (ms).
run_side() {
  local name=$1 as=$2 setup=$3 build=$4 cold=() re=() t0 t1 i
  for i in $(seq "$runs"); do
    dir=$work/$name-$i
    mkdir -p "$dir"
    [ "$as" = nobody ] && chown 65534:65534 "$dir"
    export dir
    if [ "$as" = nobody ]; then nobody dir="$dir" bash -c "$setup" >/dev/null; else bash -c "$setup" >/dev/null; fi
    for kind in cold re; do
      t0=$(date +%s%N)
      if [ "$as" = nobody ]; then
        nobody dir="$dir" bash -c "$build" >"$work/log" 2>&1 || { echo "$name failed:"; tail -5 "$work/log"; return 1; }
      else
        bash -c "$build" >"$work/log" 2>&1 || { echo "$name failed:"; tail -5 "$work/log"; return 1; }
      fi
      t1=$(date +%s%N)
      if [ $kind = cold ]; then cold+=("$(ms "$t0" "$t1")"); else re+=("$(ms "$t0" "$t1")"); fi
    done
    if [ "$name" = buildah-root ]; then
      buildah --root "$dir/root" --runroot "$dir/run" rmi -a -f >/dev/null 2>&1 || true
      findmnt -rn -o TARGET | grep "^$dir/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    fi
    rm -rf "$dir"
  done
  echo "$(printf '%s\n' "${cold[@]}" | median) $(printf '%s\n' "${re[@]}" | median)"
}

rb_setup="RBUILD_ROOT=\$dir/state '$rbuild' import '$work/base.tar' busybox:latest"
rb_build="RBUILD_ROOT=\$dir/state '$rbuild' build -q --network none -t steps '$work/steps'"
bh="buildah --root \$dir/root --runroot \$dir/run --storage-driver overlay"
bh_setup="$bh pull -q docker-archive:$work/bb.tar"
bh_build="cd '$work/steps' && $bh bud --layers --network none -q -t steps ."
# A docker-archive of the base for buildah (from rbuild's import).
RBUILD_ROOT=$work/bbstate "$rbuild" import "$work/base.tar" busybox:latest >/dev/null
RBUILD_ROOT=$work/bbstate "$rbuild" save -o "$work/bb.tar" busybox:latest
chmod 644 "$work/bb.tar"
rm -rf "$work/bbstate"

echo "machine: $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); rbuild: $rbuild; $runs runs each, medians in ms"
read -r rr_cold rr_re < <(run_side rbuild-root root "$rb_setup" "$rb_build")
echo "rbuild as root:        cold $rr_cold  no-op rebuild $rr_re"
read -r rn_cold rn_re < <(run_side rbuild-nobody nobody "$rb_setup" "$rb_build")
echo "rbuild as nobody:      cold $rn_cold  no-op rebuild $rn_re"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "rbuild nobody/root:    cold $(ratio "$rn_cold" "$rr_cold")  no-op rebuild $(ratio "$rn_re" "$rr_re")"
rb_copy_build="RBUILD_SNAPSHOTTER=copy $rb_build"
read -r rc_cold rc_re < <(run_side rbuild-nobody-copy nobody "$rb_setup" "$rb_copy_build")
echo "rbuild as nobody, copying snapshotter: cold $rc_cold  no-op rebuild $rc_re"
echo "rbuild copy/overlay, nobody: cold $(ratio "$rc_cold" "$rn_cold")  no-op rebuild $(ratio "$rc_re" "$rn_re")"
if command -v buildah >/dev/null; then
  read -r bn_cold bn_re < <(run_side buildah-nobody nobody "$bh_setup" "$bh_build")
  echo "buildah as nobody:     cold $bn_cold  no-op rebuild $bn_re"
  read -r br_cold br_re < <(run_side buildah-root root "$bh_setup" "$bh_build")
  echo "buildah as root:       cold $br_cold  no-op rebuild $br_re"
  echo "buildah nobody/root:   cold $(ratio "$bn_cold" "$br_cold")  no-op rebuild $(ratio "$bn_re" "$br_re")"
  echo "rbuild/buildah, nobody: cold $(ratio "$rn_cold" "$bn_cold")  no-op rebuild $(ratio "$rn_re" "$bn_re")"
  bhv="buildah --root \$dir/root --runroot \$dir/run --storage-driver vfs"
  read -r bv_cold bv_re < <(run_side buildah-nobody-vfs nobody "$bhv pull -q docker-archive:$work/bb.tar" "cd '$work/steps' && $bhv bud --layers --network none -q -t steps .")
  echo "buildah as nobody, vfs: cold $bv_cold  no-op rebuild $bv_re"
  echo "rbuild copy / buildah vfs, nobody: cold $(ratio "$rc_cold" "$bv_cold")  no-op rebuild $(ratio "$rc_re" "$bv_re")"
else
  echo "buildah: not installed"
fi
