#!/usr/bin/env bash
# Build a local Debian bookworm base image without any container registry.
#
#   DOCKER_HOST=... deploy/docker/base-image.sh     prints the image tag (stdout, one line)
#
# debootstrap (minbase) + Debian's python3 (3.11 in bookworm, the version the images target),
# python3-venv, python3-pip, ca-certificates and redis-server (so the container tests run Redis
# from the same base), then `docker import`. Pass the tag to the Dockerfiles as
# --build-arg BASE_IMAGE=<tag>.
#
# Options (environment):
#   EXTRA_CA_DIR  extra CA certificates (*.crt) to trust inside the image, for machines whose
#                 HTTPS goes through an intercepting proxy; pip is pointed at the system bundle.
#                 Default /usr/local/share/ca-certificates; empty or missing = none (no-op).
#   DEBIAN_MIRROR default http://deb.debian.org/debian
#   BASE_CACHE    scratch dir for debootstrap's .deb cache and the rootfs tarball
#                 (default /var/tmp/asyncinfer-base), so a rebuild after a docker data wipe
#                 is a plain `docker import`.
#
# Cache: the tag carries a hash of every input (this script, suite, mirror, arch, the CA
# files); when an image with that tag exists nothing is done.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,redis-server,passwd
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
EXTRA_CA_DIR="${EXTRA_CA_DIR-/usr/local/share/ca-certificates}"
BASE_CACHE="${BASE_CACHE:-/var/tmp/asyncinfer-base}"
REPO_NAME=asyncinfer-base

log() { echo "base-image.sh: $*" >&2; }
docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}
DOCKER="${DOCKER:-$(docker_cli)}"
ARCH="$(dpkg --print-architecture 2>/dev/null || uname -m)"

ca_files() {
    [ -n "$EXTRA_CA_DIR" ] && [ -d "$EXTRA_CA_DIR" ] || return 0
    find "$EXTRA_CA_DIR" -type f -name '*.crt' | LC_ALL=C sort
}

input_hash() {
    {
        sha256sum "$0" | cut -d' ' -f1
        echo "$SUITE $PACKAGES $DEBIAN_MIRROR $ARCH"
        ca_files | while read -r f; do sha256sum "$f" | cut -d' ' -f1; done
    } | sha256sum | cut -c1-12
}

HASH="$(input_hash)"
TAG="$REPO_NAME:$SUITE-$HASH"
TARBALL="$BASE_CACHE/rootfs-$SUITE-$HASH.tar.gz"

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists (inputs unchanged)"
    echo "$TAG"; exit 0
fi

if [ ! -f "$TARBALL" ]; then
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
    }
    mkdir -p "$BASE_CACHE/debs"
    ROOTFS="$(mktemp -d "$BASE_CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$ROOTFS"' EXIT
    log "debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS"
    # --include resolves Depends only (no Recommends), so no compilers come in with python3-pip.
    debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$BASE_CACHE/debs" \
        "$SUITE" "$ROOTFS" "$DEBIAN_MIRROR" >&2

    ca_files | while read -r f; do
        log "trusting extra CA $(basename "$f")"
        cp "$f" "$ROOTFS/usr/local/share/ca-certificates/"
    done
    chroot "$ROOTFS" update-ca-certificates >&2
    # pip ships its own CA bundle (certifi); point it at the system one so the extra CAs count.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
    # Small image: no apt lists, .deb cache, docs or man pages.
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
        "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
        "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/*
    # A stray resolv.conf/hostname from the build host must not be baked in; Docker mounts its own.
    : >"$ROOTFS/etc/resolv.conf"
    log "writing $TARBALL"
    tar --numeric-owner -C "$ROOTFS" -czf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$ROOTFS"; trap - EXIT
fi

log "docker import $TARBALL as $TAG"
"$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase + $PACKAGES" \
    "$TARBALL" "$TAG" >&2
echo "$TAG"
