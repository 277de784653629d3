#!/bin/bash
# Run a command inside a User-Mode-Linux kernel that has real vfat, with IMAGE mounted at MOUNTPOINT.
# The guest's root fs is the host's / through hostfs, so host binaries, the venv and the work tree
# are all visible; the command runs as root in the current directory.
# Adapted from the design notes' testing-recipes/uml/uml-vfat-run.sh (tried on this machine kind).
#
# usage: uml-vfat-run.sh IMAGE MOUNTPOINT [MOUNT_OPTS] -- command args...
# The command sees COLDVAULT_FAT_MOUNT (the mount point), COLDVAULT_FAT_DEVICE (/dev/ubda) and
# COLDVAULT_FAT_OPTS (the mount options), so it can unmount and mount again.
# Exit status: the command's; 99 if the mount failed inside the guest; 98 if the guest died.
set -euo pipefail
IMG=$(realpath "$1"); MP=$2; shift 2
OPTS="utf8=1,shortname=mixed,flush,uid=0,gid=0,fmask=0022,dmask=0022"   # what udisks uses on a desktop
if [ "$1" != "--" ]; then OPTS=$1; shift; fi; shift
UML_TIMEOUT=${UML_TIMEOUT:-120}
WORK=$(mktemp -d /tmp/uml.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
printf '%q ' "$@" > "$WORK/cmd"
cat > "$WORK/init" <<INIT
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb NO_COLOR=1
mount -t proc proc /proc; mount -t sysfs sys /sys; mountpoint -q /dev || mount -t devtmpfs dev /dev; mount -t tmpfs tmp /run
K=/usr/lib/uml/modules/\$(uname -r)/kernel/fs
for m in fat/fat.ko fat/vfat.ko nls/nls_cp437.ko nls/nls_iso8859-1.ko nls/nls_utf8.ko; do insmod \$K/\$m; done
mkdir -p "$MP"
if mount -t vfat -o "$OPTS" /dev/ubda "$MP"; then
  cd "$PWD"
  env COLDVAULT_FAT_MOUNT="$MP" COLDVAULT_FAT_DEVICE=/dev/ubda COLDVAULT_FAT_OPTS="$OPTS" \
    sh -c "\$(cat $WORK/cmd)"; echo \$? > $WORK/rc
  mountpoint -q "$MP" && umount "$MP"
else echo 99 > $WORK/rc; fi
echo o > /proc/sysrq-trigger; sleep 60
INIT
chmod +x "$WORK/init"
env -u LD_PRELOAD -u UMOCKDEV_DIR timeout "$UML_TIMEOUT" \
  linux.uml mem=768M ubd0="$IMG" root=/dev/root rootfstype=hostfs rootflags=/ rw \
  init="$WORK/init" con0=null,fd:1 con=null quiet >"$WORK/console" 2>&1 || true
grep -v -E '^(SELinux|mmapper_init|sysrq)' "$WORK/console" || true
rc=$(cat "$WORK/rc" 2>/dev/null || echo 98); exit "$rc"
