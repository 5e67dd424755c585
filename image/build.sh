#!/usr/bin/env bash
# `make image`: build the session-sidecar OCI image from the Dockerfile with Debian's buildah, without a daemon
# or a registry. The base image is made here from Debian packages (debootstrap), once, and cached under
# $IMAGE_CACHE; the image is written to a buildah store of its own there (vfs driver: works on any filesystem
# and inside containers where overlay mounts are refused).
#   image/build.sh            build localhost/session-sidecar:<version>
#   image/build.sh --env      print the buildah flags of the store (for `buildah $(image/build.sh --env) push ...`)
# Environment: IMAGE (name:tag), IMAGE_CACHE, BASE_SUITE (Debian suite of the base), BASE_IMAGE / RUNTIME_IMAGE
# (use your registry's images instead of the local base; both must carry the same python3 at the same path).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${IMAGE_CACHE:-/var/tmp/session-sidecar-image-base}"
SUITE="${BASE_SUITE:-bookworm}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -1)"
IMAGE="${IMAGE:-localhost/session-sidecar:$VERSION}"
LOCAL_BUILD_BASE="localhost/session-sidecar-base:$SUITE-build"
LOCAL_RUNTIME_BASE="localhost/session-sidecar-base:$SUITE-runtime"
STORE=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs)

if [ "${1:-}" = "--env" ]; then
  printf '%s ' "${STORE[@]}"; echo
  exit 0
fi

say() { echo "image: $*" >&2; }
die() { echo "image: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and buildah's chroot isolation); run 'sudo make image'"

missing=""
command -v buildah >/dev/null 2>&1 || missing="$missing buildah"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
  say "installing Debian$missing (the OCI builder and the base image's maker)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || die "apt-get install$missing failed"
fi

mkdir -p "$CACHE"
bah() { buildah "${STORE[@]}" "$@"; }
have_image() { bah inspect --type image "$1" >/dev/null 2>&1; }

# The build stage's rootfs: Debian minbase + python3 with venv (ensurepip) and CA certificates. Packages come from
# this machine's Debian mirror; nothing is pulled from a container registry.
build_rootfs() {
  local dest="$CACHE/rootfs-$SUITE" mirror
  if [ ! -x "$dest/usr/bin/python3" ]; then
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    rm -rf "$dest.tmp"
    say "debootstrap $SUITE (once; cached in $dest)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$dest.tmp" "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed (see $CACHE/debootstrap.log)"
    # apt's lists and package cache are not part of an image, nor this machine's resolver and host name (the
    # runtime mounts its own)
    rm -rf "$dest.tmp"/var/lib/apt/lists/* "$dest.tmp"/var/cache/apt/*.bin "$dest.tmp"/var/cache/apt/archives/*.deb \
      "$dest.tmp"/etc/resolv.conf "$dest.tmp"/etc/hostname
    mv "$dest.tmp" "$dest"
  fi
  echo "$dest"
}

# The runtime stage's rootfs: python3, the libraries it loads and the CA certificates, without shell or package
# tools (image/runtime_rootfs.py says what is kept).
runtime_rootfs() {
  local dest="$CACHE/runtime-$SUITE"
  if [ ! -x "$dest/usr/bin/python3" ]; then
    rm -rf "$dest.tmp"
    python3 "$HERE/runtime_rootfs.py" "$1" "$dest.tmp" >&2 || die "runtime_rootfs.py failed"
    mv "$dest.tmp" "$dest"
  fi
  echo "$dest"
}

import_rootfs() {  # import_rootfs DIR NAME: an image of one layer holding DIR
  local ctr mnt
  ctr=$(bah from --quiet scratch)
  mnt=$(bah mount "$ctr")
  cp -a "$1/." "$mnt/"
  bah umount "$ctr" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --os linux --arch "$(dpkg --print-architecture)" "$ctr"
  bah commit --quiet --rm "$ctr" "$2" >/dev/null
}

if [ -z "${BASE_IMAGE:-}" ]; then
  if ! have_image "$LOCAL_BUILD_BASE" || { [ -z "${RUNTIME_IMAGE:-}" ] && ! have_image "$LOCAL_RUNTIME_BASE"; }; then
    rootfs=$(build_rootfs)
    if ! have_image "$LOCAL_BUILD_BASE"; then
      say "importing $LOCAL_BUILD_BASE"
      import_rootfs "$rootfs" "$LOCAL_BUILD_BASE"
    fi
    if [ -z "${RUNTIME_IMAGE:-}" ] && ! have_image "$LOCAL_RUNTIME_BASE"; then
      say "importing $LOCAL_RUNTIME_BASE"
      import_rootfs "$(runtime_rootfs "$rootfs")" "$LOCAL_RUNTIME_BASE"
    fi
  fi
  BASE_IMAGE="$LOCAL_BUILD_BASE"
  RUNTIME_IMAGE="${RUNTIME_IMAGE:-$LOCAL_RUNTIME_BASE}"
fi
RUNTIME_IMAGE="${RUNTIME_IMAGE:-$BASE_IMAGE}"

build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" --build-arg "VERSION=$VERSION")
# pip inside the build reaches PyPI (or the mirror /etc/pip.conf names) with this machine's CA bundle, given to
# the RUN step as secrets: they are never written into a layer.
secrets=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && secrets+=(--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt)
[ -f /etc/pip.conf ] && secrets+=(--secret id=pipconf,src=/etc/pip.conf)

# --pull=missing: the local bases are never pulled; a BASE_IMAGE/RUNTIME_IMAGE of yours is, the first time
say "building $IMAGE from $BASE_IMAGE (runtime $RUNTIME_IMAGE)"
bah build --quiet --isolation chroot --network host --pull=missing --no-cache --force-rm \
  "${build_args[@]}" "${secrets[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" >/dev/null
say "built $IMAGE ($(bah inspect --type image --format '{{.FromImageID}}' "$IMAGE" | cut -c1-12))"
# the image this tag named before is now dangling: drop it (vfs keeps every layer as a full copy)
bah rmi --prune >/dev/null 2>&1 || true
