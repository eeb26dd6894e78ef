"""The BPF loader's pure parts: include flattening and the -D flags."""
from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path

import pytest

from services.datapath import loader
from services.runtime.config import DatapathConfig, MapSizes, NodeConfig

_LINE = re.compile(r'^#line (\d+) "(.+)"$')


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check_line_directives(flat: str) -> None:
    """Every line of FLAT is the line of the file its #line directive says it is, or stands
    for an #include that was already spliced in (an empty line)."""
    sources: dict[str, list[str]] = {}
    where, n = None, 0
    for out in flat.split("\n"):
        m = _LINE.match(out)
        if m:
            where, n = m[2], int(m[1])
            sources.setdefault(where, Path(where).read_text().splitlines())
            continue
        assert where is not None, "output starts without a #line directive"
        real = sources[where][n - 1]
        assert out == real or (out == "" and loader._LOCAL_INCLUDE.match(real)), f"{where}:{n}: {out!r}"
        n += 1


@pytest.fixture
def tree(tmp_path) -> Path:
    write(tmp_path / "lib/common.h", "#ifndef COMMON\n#define COMMON\nint common;\n#endif\n")
    write(tmp_path / "lib/a.h", '#include "common.h"\nint a;\n')
    write(tmp_path / "lib/b.h", '# include  "common.h"\nint b;\n')
    return write(tmp_path / "prog.c",
                 '#include <linux/bpf.h>\n#include "lib/a.h"\n#include "lib/b.h"\nint main;\n')


def test_local_includes_are_spliced_in_once(tree):
    flat = loader.flatten(tree)
    assert flat.count("int common;") == 1
    assert [line for line in flat.splitlines() if line.startswith("int ")] == \
        ["int common;", "int a;", "int b;", "int main;"]
    assert '#include "' not in flat and "# include" not in flat


def test_system_includes_are_left_for_the_compiler(tree):
    assert "#include <linux/bpf.h>" in loader.flatten(tree).splitlines()


def test_line_directives_point_at_the_real_file_and_line(tree):
    flat = loader.flatten(tree)
    lib = tree.parent / "lib"
    assert flat.splitlines()[0] == f'#line 1 "{tree}"'
    assert f'#line 1 "{lib / "common.h"}"' in flat
    assert f'#line 3 "{tree}"' in flat        # back in prog.c after lib/a.h (line 2)
    check_line_directives(flat)


def test_the_real_lxc_program_flattens_cleanly():
    flat = loader.flatten(loader.bpf_dir() / "lxc.c")
    assert not re.search(r'^\s*#\s*include\s+"', flat, re.MULTILINE)
    assert flat.count("#define CAPILLARY_COMMON_H") == 1
    check_line_directives(flat)


def test_a_missing_include_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        loader.flatten(write(tmp_path / "p.c", '#include "nope.h"\n'))


# ---- cflags --------------------------------------------------------------------------------

def flag(flags: list[str], name: str) -> str | None:
    found = [f.split("=", 1)[1] if "=" in f else "" for f in flags if f.split("=", 1)[0] == f"-D{name}"]
    assert len(found) <= 1, name
    return found[0] if found else None


def test_router_ip_is_in_the_byte_order_of_a_packet_on_this_host():
    flags = loader.cflags(NodeConfig(podCIDR="10.200.0.0/16"))
    expected = {"little": "0x100c80a", "big": "0xac80001"}[sys.byteorder]
    assert flag(flags, "ROUTER_IP") == expected


def test_pod_cidr_is_a_network_and_mask_in_packet_byte_order():
    flags = loader.cflags(NodeConfig(podCIDR="10.200.0.0/16"))
    net, mask = int(flag(flags, "POD_CIDR_NET"), 16), int(flag(flags, "POD_CIDR_MASK"), 16)
    assert net.to_bytes(4, sys.byteorder) == bytes([10, 200, 0, 0])
    assert mask.to_bytes(4, sys.byteorder) == bytes([255, 255, 0, 0])


def test_ip_to_be32_reads_the_address_bytes_as_the_host_does():
    ip = ipaddress.IPv4Address("192.168.1.2")
    assert loader.ip_to_be32(ip).to_bytes(4, sys.byteorder) == bytes([192, 168, 1, 2])


def test_pin_root_and_sizes_come_from_the_config():
    config = NodeConfig(datapath=DatapathConfig(bpfRoot="/sys/fs/bpf/cap-test"),
                        maps=MapSizes(endpoints=128, ipcache=256, policy=512, conntrack=1024))
    flags = loader.cflags(config)
    assert flag(flags, "PIN_ROOT") == '"/sys/fs/bpf/cap-test"'
    assert (flag(flags, "ENDPOINTS_MAP_SIZE"), flag(flags, "IPCACHE_MAP_SIZE"),
            flag(flags, "POLICY_MAP_SIZE"), flag(flags, "CT_MAP_SIZE")) == ("128", "256", "512", "1024")
    assert flag(flags, "EVENTS_RING_BYTES") == str(config.events.ringBytes)


@pytest.mark.parametrize("mode, host_stack", [("redirect", False), ("host-stack", True)])
def test_host_stack_is_defined_only_in_host_stack_mode(mode, host_stack):
    flags = loader.cflags(NodeConfig(datapath=DatapathConfig(mode=mode)))
    assert (flag(flags, "HOST_STACK") is not None) is host_stack


def test_include_dir_follows_the_bpf_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(loader.BPF_DIR_ENV, str(tmp_path))
    assert f"-I{tmp_path}" in loader.cflags(NodeConfig())
    monkeypatch.delenv(loader.BPF_DIR_ENV)
    assert (loader.bpf_dir() / "lxc.c").is_file()


@pytest.mark.parametrize("level, number", [("none", "0"), ("low", "2"), ("medium", "3"), ("maximum", "4")])
def test_event_aggregation_is_ciliums_level_number(level, number):
    from services.runtime.config import EventsConfig
    flags = loader.cflags(NodeConfig(events=EventsConfig(aggregation=level)))
    assert flag(flags, "EVENTS_AGGREGATION") == number
