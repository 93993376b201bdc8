#!/bin/sh
# Build the spokehub sandbox image without a registry: debootstrap a minimal Debian
# bookworm, add the non-root `sandbox` user (1000:1000) and /workspace, docker import.
# Same recipe as spoke/boxes/image.py (which the spoke and the tests use, with a cache).
#
#   sudo deploy/sandbox/build-image.sh [IMAGE] [MIRROR]
#
# Needs root, debootstrap (`apt-get install -y debootstrap`) and a Docker engine.
set -eu

IMAGE="${1:-spokehub-sandbox:bookworm}"
MIRROR="${2:-${SPOKEHUB_DEBIAN_MIRROR:-http://deb.debian.org/debian}}"
SUITE=bookworm

if [ "$(id -u)" != 0 ]; then
  echo "build-image.sh: debootstrap needs root; run it with sudo" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
  echo "build-image.sh: debootstrap is not installed: run 'apt-get install -y debootstrap'" >&2
  exit 1
fi
DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/spokehub-rootfs.XXXXXX")"
ROOTFS="$WORK/rootfs"
cleanup() {
  # Never delete through a mount debootstrap may have left behind (/proc, /sys).
  for m in $(awk -v p="$ROOTFS/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if ! grep -q " $ROOTFS/" /proc/mounts; then rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

echo "debootstrap $SUITE (minbase + python3-minimal, procps) from $MIRROR"
"$DEBOOTSTRAP" --variant=minbase --include=python3-minimal,procps,git,ca-certificates "$SUITE" "$ROOTFS" "$MIRROR"

echo "adding user sandbox (1000:1000) and /workspace"
grep -q '^sandbox:' "$ROOTFS/etc/passwd" ||
  echo 'sandbox:x:1000:1000:spokehub sandbox:/workspace:/bin/sh' >> "$ROOTFS/etc/passwd"
grep -q '^sandbox:' "$ROOTFS/etc/group" || echo 'sandbox:x:1000:' >> "$ROOTFS/etc/group"
if [ -f "$ROOTFS/etc/shadow" ] && ! grep -q '^sandbox:' "$ROOTFS/etc/shadow"; then
  echo 'sandbox:!:19000:0:99999:7:::' >> "$ROOTFS/etc/shadow"
fi
mkdir -p "$ROOTFS/workspace"
chown 1000:1000 "$ROOTFS/workspace"
chmod 0755 "$ROOTFS/workspace"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
       "$ROOTFS"/usr/share/info/*

echo "docker import as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'USER 1000:1000' \
  --change 'WORKDIR /workspace' \
  --change 'CMD ["/bin/sh"]' \
  - "$IMAGE"
echo "image $IMAGE is ready"
