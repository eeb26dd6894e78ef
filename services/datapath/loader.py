"""Compiles capillary's BPF C with bcc: once per node, node-wide options as -D flags.

Compiling a source also creates (and pins under datapath.bpfRoot) every map it declares
that is not pinned yet, so each owner compiles its own maps first (see MAP_SOURCES) and the
program compile finds them in place.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.datapath import bpfsys, clock
from services.datapath.maps import conntrack, ipcache, metrics
from services.datapath.maps.tunnel import PORT as OVERLAY_PORT
from services.datapath.numbers import AGGREGATION_LEVELS
from services.runtime.config import NodeConfig

BPF_DIR_ENV = "CAPILLARY_BPF_DIR"

# Which C file creates which service's maps.
MAP_SOURCES = {
    "routed": "routed_maps.c",
    "policyd": "policyd_maps.c",
    "flowd": "flowd_maps.c",
    "endpointd": "lxc.c",
}


def bpf_dir() -> Path:
    env = os.environ.get(BPF_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "bpf"


def ip_to_be32(ip) -> int:
    """An IPv4 address as the u32 a BPF program reads from a packet on this host."""
    return int.from_bytes(ip.packed, sys.byteorder)


def cflags(config: NodeConfig) -> list[str]:
    flags = [
        f"-I{bpf_dir()}",
        f'-DPIN_ROOT="{config.datapath.bpfRoot}"',
        f"-DROUTER_IP={ip_to_be32(config.router_ip):#x}",
        f"-DPOD_CIDR_NET={ip_to_be32(config.pod_network.network_address):#x}",
        f"-DPOD_CIDR_MASK={ip_to_be32(config.pod_network.netmask):#x}",
        f"-DENDPOINTS_MAP_SIZE={config.maps.endpoints}",
        f"-DIPCACHE_MAP_SIZE={config.maps.ipcache}",
        f"-DPOLICY_MAP_SIZE={config.maps.policy}",
        f"-DCT_MAP_SIZE={config.maps.conntrack}",
        f"-DEVENTS_RING_BYTES={config.events.ringBytes}",
        f"-DEVENTS_AGGREGATION={AGGREGATION_LEVELS[config.events.aggregation]}",
        f"-DOVERLAY_PORT={OVERLAY_PORT}",
        "-Wno-macro-redefined",
        *clock.clock_flags(),
    ]
    if config.datapath.mode == "host-stack":
        flags.append("-DHOST_STACK")
    if config.datapath.hostLegacyRouting:
        flags.append("-DHOST_LEGACY_ROUTING")
    return flags


@dataclass
class Loaded:
    """A compiled object: keep it alive while its program fds are in use."""

    bpf: object
    source: str

    def program_fd(self, name: str) -> int:
        from bcc import BPF
        return self.bpf.load_func(name.encode(), BPF.SCHED_CLS).fd


_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def flatten(path: Path, seen: set[Path] | None = None) -> str:
    """PATH with its local ("...") includes spliced in, each once.

    bcc rewrites map operations (map.lookup(), ...) only in the main file it compiles, so a
    helper in bpf/lib/*.h that touches a map must reach bcc as part of that file. #line
    directives keep compiler messages pointing at the real header and line.
    """
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen:
        return ""
    seen.add(path)
    out = [f'#line 1 "{path}"']
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        m = _LOCAL_INCLUDE.match(line)
        if m:
            out.append(flatten(path.parent / m.group(1), seen))
            out.append(f'#line {n + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out)


def compile_source(source: str, config: NodeConfig) -> Loaded:
    return Loaded(bpf=_compile(source, config.datapath.bpfRoot, cflags(config)), source=source)


def _compile(source: str, pin_root: str, flags: list[str]):
    from bcc import BPF   # imported here: unit tests of pure logic run without bcc
    Path(pin_root).mkdir(parents=True, exist_ok=True)
    bpf = BPF(text=flatten(bpf_dir() / source).encode(), cflags=flags)
    release_compiler_memory()
    return bpf


def release_compiler_memory() -> bool:
    """Hand the heap clang/LLVM freed after a compile back to the kernel.

    A bcc compile allocates ~80 MB (mostly in the arena of the worker thread that ran it)
    and frees it, but glibc keeps freed memory mapped: every service would carry ~110 MB of
    private memory it never touches again. malloc_trim(0) releases the free pages of every
    arena. False where there is no glibc malloc_trim (nothing to do then).
    """
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except AttributeError:
        return False


PROGRAMS_DIR = "progs"      # under datapath.bpfRoot: the tc programs endpointd attaches


def pinned_maps(config: NodeConfig) -> list[str]:
    root = Path(config.datapath.bpfRoot)
    return sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []


def pin_maps(source: str, config: NodeConfig) -> None:
    """Create and pin SOURCE's maps in a child process, for a service that reads its maps
    through their pins and should not carry LLVM in its own memory (see bpfsys.py)."""
    _run_child(source, config, [])


def pin_programs(source: str, config: NodeConfig, names: tuple[str, ...]) -> dict[str, int]:
    """Compile SOURCE in a child process, which pins its maps and its tc programs NAMES
    (under bpfRoot/progs, replacing older ones); return an fd of each pinned program."""
    _run_child(source, config, list(names))
    root = Path(config.datapath.bpfRoot) / PROGRAMS_DIR
    return {name: bpfsys.obj_get(str(root / name)) for name in names}


def _run_child(source: str, config: NodeConfig, programs: list[str]) -> None:
    if source != MAP_SOURCES["routed"]:
        ipcache.check_layout(Path(config.datapath.bpfRoot))
    if source == MAP_SOURCES["endpointd"]:
        conntrack.drop_old_layout(Path(config.datapath.bpfRoot))
        metrics.drop_old_layout(Path(config.datapath.bpfRoot))
    proc = subprocess.run([sys.executable, "-m", "services.datapath.loader", source, config.datapath.bpfRoot,
                           ",".join(programs), *cflags(config)],
                          capture_output=True, text=True, env={**os.environ, BPF_DIR_ENV: str(bpf_dir())},
                          cwd=Path(__file__).resolve().parents[2])
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {source} failed: {proc.stderr.strip()[-2000:]}")


def _compile_main(argv: list[str]) -> int:
    """`python -m services.datapath.loader SOURCE PIN_ROOT PROGRAMS CFLAGS...`: compile
    SOURCE, which pins its maps under PIN_ROOT, pin the tc programs named in PROGRAMS
    (comma-separated, may be empty) under PIN_ROOT/progs, and exit."""
    from bcc import BPF, libbcc
    source, pin_root, programs, *flags = argv
    bpf = _compile(source, pin_root, flags)
    directory = Path(pin_root) / PROGRAMS_DIR
    for name in filter(None, programs.split(",")):
        directory.mkdir(exist_ok=True)
        path = directory / name
        path.unlink(missing_ok=True)            # attached copies stay attached until replaced
        if libbcc.lib.bpf_obj_pin(bpf.load_func(name.encode(), BPF.SCHED_CLS).fd, str(path).encode()) != 0:
            raise OSError(f"cannot pin program {name} at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(_compile_main(sys.argv[1:]))
