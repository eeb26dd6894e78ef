#!/usr/bin/env bash
# Prepare this node for capillary. Idempotent: every step checks before it acts.
#   apt packages, kernel headers bcc can find, bpffs, and .venv (which sees bcc).
#   CAPILLARY_EXTRAS picks the optional dependencies installed into .venv (default: test;
#   `make bench` asks for test,bench).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-bpfcc python3-venv python3-pip iproute2 iptables iputils-ping
              netcat-openbsd iperf3 sockperf tcpdump util-linux procps git
              podman runc containernetworking-plugins containerd busybox-static docker.io docker-compose
              chromium)

log() { printf 'setup: %s\n' "$*"; }

install_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    # bcc needs kernel headers unless the running kernel ships its own.
    if [ ! -e "/lib/modules/$(uname -r)/build/include" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
        dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" \
            || missing+=(linux-headers-amd64)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

link_kernel_headers() {
    local mod="/lib/modules/$(uname -r)"
    [ -e "$mod/build/include" ] && return 0
    local build common
    build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
    if [ -z "$build" ] || [ -z "$common" ]; then
        log "no kernel headers under /usr/src; bcc will fail to compile" >&2
        return 1
    fi
    log "linking $mod/build -> $build, $mod/source -> $common"
    mkdir -p "$mod"
    ln -sfn "$build" "$mod/build"
    ln -sfn "$common" "$mod/source"
}

mount_bpffs() {
    if ! mountpoint -q /sys/fs/bpf; then
        log "mounting bpffs on /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf
    fi
}

make_venv() {
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
        log "creating .venv (with system site packages, for bcc)"
        rm -rf .venv
        /usr/bin/python3 -m venv --system-site-packages .venv
    fi
    local extras="${CAPILLARY_EXTRAS:-test}"
    local stamp=".venv/.capillary-installed-${extras//,/-}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        log "installing capillary into .venv (extras: $extras)"
        # pip's notes about unreachable extra index locations are noise here, not errors.
        .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]" 2> >(grep -v 'is ignored: it is neither' >&2)
        touch "$stamp"
    fi
}

# Where CNI runtimes look for plugins: a wrapper that runs this checkout's plugin
# (services/cni/install.py writes it, and rewrites it only when it would change).
install_cni_plugin() {
    .venv/bin/python -m services.cni.install /opt/cni/bin /usr/lib/cni | while read -r line; do log "$line"; done
}

install_packages
link_kernel_headers
mount_bpffs
make_venv
install_cni_plugin
log "ok"
