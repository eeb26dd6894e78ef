# One image for the whole node: nats-server, endpointd, policyd, routed, flowd and the CLI.
# `docker compose up` builds it (see compose.yaml); `make compose-image` builds it with no
# registry at all (a local base image and wheels built on the host, in dist/wheels/).
FROM debian:bookworm-slim AS base

# No documentation, man pages or translations in any layer.
RUN printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
        > /etc/dpkg/dpkg.cfg.d/01-capillary-slim

# bcc (its clang and LLVM are the only compiler in the image), iptables for routed,
# nsenter (util-linux, in the base) for `capillary exec`, ping for a first check in a pod.
#
# Kernel headers: bcc compiles against /lib/modules/$(uname -r)/build, which the running
# kernel's packages may not provide (and which must not be baked in for one kernel). The
# image carries Debian's headers, unpacked without their gcc/kbuild dependencies (bcc only
# reads include/ and arch/*/include/); at start the entrypoint uses the running kernel's own
# headers when they are mounted from the host, else the kernel's /sys/kernel/kheaders.tar.xz,
# else links these (README, "Docker Compose").
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3-bpfcc python3-venv iptables iputils-ping; \
    arch="$(dpkg --print-architecture)"; \
    flavour="$(apt-cache depends "linux-headers-$arch" | awk '/Depends: linux-headers-/ {print $2; exit}')"; \
    common="$(apt-cache depends "$flavour" | awk '/Depends: linux-headers-.*-common/ {print $2; exit}')"; \
    cd /tmp; apt-get download "$flavour" "$common"; \
    mkdir /tmp/headers; for deb in /tmp/linux-headers-*.deb; do dpkg-deb -x "$deb" /tmp/headers; done; \
    mv /tmp/headers/usr/src/* /usr/src/; rm -rf /tmp/headers /tmp/*.deb; \
    rm -f "/usr/src/$flavour/scripts" "/usr/src/$flavour/tools"; \
    for a in /usr/src/"$common"/arch/*/; do \
        [ -d "/usr/src/$flavour/arch/$(basename "$a")" ] || rm -rf "$a"; \
    done; \
    apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log

# The project, in a venv that sees the system's bcc. Wheels in dist/wheels (built on the
# host by scripts/compose-image.sh) install offline; without them pip uses the index.
FROM base AS install
COPY . /src
RUN set -eux; \
    python3 -m venv --system-site-packages /opt/capillary; \
    if ls /src/dist/wheels/capillary-*.whl >/dev/null 2>&1; then \
        /opt/capillary/bin/pip install --no-cache-dir --no-index --find-links /src/dist/wheels capillary; \
    else \
        /opt/capillary/bin/pip install --no-cache-dir /src; \
    fi; \
    /opt/capillary/bin/pip uninstall -y -q pip setuptools; \
    cp -r /src/bpf /opt/capillary/bpf

FROM base
COPY --from=install /opt/capillary /opt/capillary
ENV PATH=/opt/capillary/bin:$PATH \
    CAPILLARY_BPF_DIR=/opt/capillary/bpf \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="capillary" \
      org.opencontainers.image.description="Cilium-style eBPF pod networking for one Linux node"
ENTRYPOINT ["capillary-container"]
CMD ["capillary", "status"]
