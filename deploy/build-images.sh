#!/bin/sh
# Build the spokehub images: the hub, the spoke and the sandbox image boxes run.
#
#   deploy/build-images.sh [OPTIONS] [hub] [spoke] [sandbox]      (default: all three)
#
# With a registry (the usual case): deploy/build-images.sh
#   The hub and spoke start FROM python:3.11-slim-bookworm, the sandbox FROM
#   debian:bookworm-slim, and pip fetches spokehub's dependencies from PyPI inside the build.
#
# Without a registry: sudo deploy/build-images.sh --local-base --wheelhouse
#   --local-base   debootstraps a Debian bookworm base image (python3, python3-venv,
#                  ca-certificates) and builds all three FROM it. Needs root and debootstrap;
#                  about a minute the first time, then cached by its tag.
#   --wheelhouse   makes the Python wheels on this machine, with its pip settings (proxy,
#                  CA, index), and installs them in the images with --no-index: for build
#                  containers that cannot reach PyPI or not verify its certificate. The host's
#                  Python must be 3.11 (the images' Python); wheels are cached per pyproject.toml.
#
# Other options:
#   --tag TAG             tag all three images TAG (default: hub and spoke `latest`, sandbox
#                         `bookworm`, the image name spokes allow by default)
#   --hash-tag            tag each image h-<hash of what goes into it: sources, Dockerfile,
#                         base image, options>, and skip a build whose image exists (tests)
#   --base IMAGE          base of the hub and spoke images (a Python 3.11 with venv)
#   --sandbox-base IMAGE  base of the sandbox image (Debian or Ubuntu, with apt)
#
# Environment: SPOKEHUB_DEBIAN_MIRROR (default http://deb.debian.org/debian), PYTHON (the
# interpreter whose pip makes the wheelhouse; default .venv/bin/python, else python3),
# XDG_CACHE_HOME (the wheelhouse goes to $XDG_CACHE_HOME/spokehub, default ~/.cache/spokehub).
# Ends with one line per image: `image COMPONENT NAME`.
set -eu

REPO="$(cd "$(dirname "$0")/.." && pwd)"
MIRROR="${SPOKEHUB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/spokehub"
PY_BASE=python:3.11-slim-bookworm
SANDBOX_BASE=debian:bookworm-slim
# The local base: change LOCAL_INCLUDE and its tag changes with it (a new recipe, a new image).
LOCAL_INCLUDE=python3,python3-venv,ca-certificates
LOCAL_BASE="spokehub-base:bookworm-$(printf 'minbase|%s|v1' "$LOCAL_INCLUDE" | sha256sum | cut -c1-12)"
# What the hub and spoke images are made of (their Dockerfiles COPY nothing else).
SOURCES="pyproject.toml README.md protocol hub spoke client cli deploy/hub deploy/spoke"

tag="" hash_tag=0 local_base=0 wheelhouse=0 components=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --hash-tag) hash_tag=1; shift ;;
    --local-base) local_base=1; shift ;;
    --wheelhouse) wheelhouse=1; shift ;;
    --base) PY_BASE="$2"; shift 2 ;;
    --sandbox-base) SANDBOX_BASE="$2"; shift 2 ;;
    hub|spoke|sandbox) components="$components $1"; shift ;;
    -h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$components" ] || components="hub spoke sandbox"
say() { printf '==> %s\n' "$*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# --- the local base image: debootstrap + docker import, skipped when the tag exists -------
build_local_base() {
  if have_image "$LOCAL_BASE"; then say "base image $LOCAL_BASE exists"; return; fi
  [ "$(id -u)" = 0 ] || { echo "build-images.sh: --local-base runs debootstrap, which needs root" >&2; exit 1; }
  debootstrap="$(command -v debootstrap || echo /usr/sbin/debootstrap)"
  [ -x "$debootstrap" ] || { echo "build-images.sh: install debootstrap (apt-get install -y debootstrap)" >&2; exit 1; }
  work="$(mktemp -d "${TMPDIR:-/tmp}/spokehub-base.XXXXXX")"
  rootfs="$work/rootfs"
  trap remove_work EXIT; trap 'exit 130' INT TERM
  say "debootstrap bookworm (minbase + $LOCAL_INCLUDE) from $MIRROR; about a minute"
  "$debootstrap" --variant=minbase --include="$LOCAL_INCLUDE" bookworm "$rootfs" "$MIRROR" >"$work/log" 2>&1 ||
    { tail -n 20 "$work/log" >&2; echo "build-images.sh: debootstrap failed" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  say "docker import as $LOCAL_BASE"
  # The ENV a registry's debian/python image has, which an imported tree lacks.
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$LOCAL_BASE" >/dev/null
  remove_work; trap - EXIT INT TERM
}

# Never delete through a mount debootstrap may have left behind (/proc, /sys).
remove_work() {
  for m in $(awk -v p="$rootfs/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  grep -q " $rootfs/" /proc/mounts || rm -rf "$work"
}

# --- the wheelhouse: every dependency as a wheel, made with this machine's pip --------------
make_wheelhouse() {
  py="${PYTHON:-}"
  [ -n "$py" ] || { if [ -x "$REPO/.venv/bin/python" ]; then py="$REPO/.venv/bin/python"; else py=python3; fi; }
  "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    { echo "build-images.sh: --wheelhouse needs the host's Python to be 3.11, like the images' (PYTHON=…)" >&2; exit 1; }
  WHEELS="$CACHE/wheelhouse-$(sha256sum "$REPO/pyproject.toml" | cut -c1-12)"
  if [ -f "$WHEELS/.complete" ]; then say "wheelhouse $WHEELS exists"; return; fi
  say "making the wheelhouse $WHEELS (pip wheel; a minute or two the first time)"
  rm -rf "$WHEELS.partial"; mkdir -p "$WHEELS.partial"
  # setuptools: the build backend pip needs, offline, to install spokehub from its sources.
  "$py" -m pip wheel --quiet --disable-pip-version-check -w "$WHEELS.partial" "setuptools>=68" "$REPO"
  rm -f "$WHEELS.partial"/spokehub-*.whl   # installed from the sources in the image instead
  touch "$WHEELS.partial/.complete"
  rm -rf "$WHEELS"; mv "$WHEELS.partial" "$WHEELS"
  # Wheelhouses of earlier pyproject.toml versions are of no more use.
  for old in "$CACHE"/wheelhouse-*; do
    case "$old" in "$WHEELS"|*.partial) ;; *) rm -rf "$old" ;; esac
  done
}

# content_hash DIR PATHS...: a tar of PATHS with names, owners and times fixed: its hash is the content.
content_hash() {
  dir="$1"; shift
  (cd "$dir" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
     --mode='u+rwX,go+rX,go-w' --exclude=__pycache__ --exclude='*.pyc' -cf - "$@") | sha256sum | cut -c1-12
}
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || echo "$1"; }

# build COMPONENT BASE CONTEXT DOCKERFILE PATHS...: one image; PATHS (of CONTEXT) are what its
# hash tag is made of
build() {
  component="$1" base="$2" context="$3" dockerfile="$4"; shift 4
  pip_options=""
  if [ "$component" != sandbox ] && [ "$wheelhouse" = 1 ]; then
    pip_options="--no-index --find-links /wheelhouse"
  fi
  if [ "$hash_tag" = 1 ]; then
    t="h-$(printf '%s|%s|%s|%s' "$component" "$(content_hash "$context" "$@")" \
           "$(image_id "$base")" "$pip_options" | sha256sum | cut -c1-12)"
  elif [ -n "$tag" ]; then t="$tag"
  elif [ "$component" = sandbox ]; then t=bookworm
  else t=latest
  fi
  set -- --build-arg "BASE=$base"
  if [ -n "$pip_options" ]; then
    set -- "$@" --build-arg WHEELHOUSE=wheelhouse --build-arg "PIP_OPTIONS=$pip_options"
  fi
  image="spokehub-$component:$t"
  if [ "$hash_tag" = 1 ] && have_image "$image"; then
    say "$image exists (same sources, base and options)"
  else
    say "building $image FROM $base"
    if [ -n "$pip_options" ] && [ ! -d "$context/wheelhouse" ]; then
      cp -R "$WHEELS" "$context/wheelhouse"
    fi
    docker build "$@" -t "$image" -f "$context/$dockerfile" "$context"
  fi
  built="$built
image $component $image"
}

# One snapshot of the sources for both the hub and the spoke: the two builds see the same files
# (and so share their build stages' layers) even while the tree changes, and the hash tag names
# what was really built. build() adds the wheelhouse to it when it builds.
snapshot() {
  SRC="$(mktemp -d "${TMPDIR:-/tmp}/spokehub-ctx.XXXXXX")"
  trap 'rm -rf "$SRC"' EXIT; trap 'exit 130' INT TERM
  (cd "$REPO" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - $SOURCES) | tar -C "$SRC" -xf -
}

if [ "$local_base" = 1 ]; then
  build_local_base
  PY_BASE="$LOCAL_BASE" SANDBOX_BASE="$LOCAL_BASE"
fi
case "$components" in
  *hub*|*spoke*) if [ "$wheelhouse" = 1 ]; then make_wheelhouse; fi; snapshot ;;
esac
built=""
for c in $components; do
  case "$c" in
    hub|spoke) build "$c" "$PY_BASE" "$SRC" "deploy/$c/Dockerfile" $SOURCES ;;
    # The sandbox's context is its own directory, as in `docker build deploy/sandbox`.
    sandbox) build sandbox "$SANDBOX_BASE" "$REPO/deploy/sandbox" Dockerfile Dockerfile ;;
  esac
done
printf '%s\n' "$built" | sed '/^$/d'
