#!/usr/bin/env bash
# Build the capillary image where no image registry is reachable and pip cannot run inside
# `docker build`:
#   1. the base image the Dockerfile's FROM names, made locally (debootstrap + docker import)
#      unless the engine already has it;
#   2. wheels for capillary and its dependencies, built on the host into dist/wheels/;
#   3. docker build.
# The base rootfs tarball and the dependency wheels are cached in $CAPILLARY_CACHE
# (default /var/cache/capillary), outside the clone, so a fresh clone reuses them.
# Usage: scripts/compose-image.sh [IMAGE]   (default: $CAPILLARY_IMAGE or capillary:latest)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-${CAPILLARY_IMAGE:-capillary:latest}}
CACHE=${CAPILLARY_CACHE:-/var/cache/capillary}
PY=${PYTHON:-.venv/bin/python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=$(awk 'toupper($1) == "FROM" {print $2; exit}' Dockerfile)

log() { printf 'compose-image: %s\n' "$*"; }

base_image() {
    if docker image inspect "$BASE" >/dev/null 2>&1; then
        log "base image $BASE is present"
        return
    fi
    local suite=${BASE#*:}; suite=${suite%%-*}          # debian:bookworm-slim -> bookworm
    local tarball="$CACHE/rootfs-$suite-minbase.tar"
    if [ ! -s "$tarball" ]; then
        log "debootstrap $suite into a new rootfs"
        local root
        root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        trap 'rm -rf "$root"' RETURN
        debootstrap --variant=minbase "$suite" "$root" "$MIRROR" >"$root.log" 2>&1 \
            || { tail -20 "$root.log" >&2; rm -f "$root.log"; return 1; }
        rm -f "$root.log"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    fi
    log "importing $tarball as $BASE"
    docker import "$tarball" "$BASE" >/dev/null
}

wheels() {
    local out=dist/wheels
    rm -rf "$out"; mkdir -p "$out" "$CACHE/wheels"
    # capillary itself, always from this tree (no build isolation: no index needed)
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$out" . 2>/dev/null
    local own=("$out"/capillary-*.whl)
    # its dependencies: from the cache when it has them all, else from the index into the cache
    if ! "$PY" -m pip wheel -q --disable-pip-version-check --no-index --find-links "$CACHE/wheels" \
            -w "$out" "${own[0]}" 2>/dev/null; then
        log "fetching dependency wheels into $CACHE/wheels"
        "$PY" -m pip wheel -q --disable-pip-version-check --find-links "$CACHE/wheels" \
            -w "$CACHE/wheels" "${own[0]}" 2> >(grep -v 'is ignored: it is neither' >&2)
        rm -f "$CACHE"/wheels/capillary-*.whl
        "$PY" -m pip wheel -q --disable-pip-version-check --no-index --find-links "$CACHE/wheels" \
            -w "$out" "${own[0]}"
    fi
    log "$(ls "$out" | wc -l) wheels in $out"
}

mkdir -p "$CACHE"
base_image
wheels
log "building $IMAGE"
docker build -q --force-rm --network host -t "$IMAGE" . >/dev/null
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
