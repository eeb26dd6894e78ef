#!/usr/bin/env bash
# Prepare a host for capillary in containers (compose.yaml). Idempotent.
#   --install: first install what building and running the image needs on Debian
#              (docker.io, docker-compose, debootstrap), when missing
#   - bpffs on /sys/fs/bpf, a shared mount: pinned maps stay on the host
#   - /run/netns a shared mount: pods' network namespaces, made inside the endpointd
#     container, appear on the host and outlive the container
# systemd hosts have shared mounts already; this one's are private by default.
set -euo pipefail

log() { printf 'compose-host: %s\n' "$*"; }

if [ "${1:-}" = --install ]; then
    missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
mkdir -p /run/netns
if ! mountpoint -q /run/netns; then
    log "bind-mounting /run/netns on itself (as ip netns add does)"
    mount --bind /run/netns /run/netns
fi
for m in /sys/fs/bpf /run/netns; do
    if [ "$(findmnt -no PROPAGATION "$m")" != shared ]; then
        log "making $m a shared mount"
        mount --make-shared "$m"
    fi
done
