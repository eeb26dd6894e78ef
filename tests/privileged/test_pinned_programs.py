"""Services compile in a child process (LLVM stays out of their memory): the child pins the
maps and, for endpointd, the tc programs, which the service then opens by path."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.datapath import loader
from services.runtime.config import DatapathConfig, NodeConfig

BPF_PROG_TYPE_SCHED_CLS = 3


def prog_type(fd: int) -> int:
    return int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("prog_type:")[1].split()[0])


def test_the_child_pins_maps_and_programs_and_a_second_compile_replaces_them():
    root = f"/sys/fs/bpf/capillary-pin-test-{os.getpid()}"
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=root))
    fds: list[int] = []
    try:
        for source in ("routed_maps.c", "policyd_maps.c", "flowd_maps.c"):
            loader.pin_maps(source, config)
        first = loader.pin_programs("lxc.c", config, ("from_container", "to_container"))
        fds += first.values()
        assert all(prog_type(fd) == BPF_PROG_TYPE_SCHED_CLS for fd in first.values())
        second = loader.pin_programs("lxc.c", config, ("from_container", "to_container"))
        fds += second.values()
        ids = [int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("prog_id:")[1].split()[0])
               for fd in (first["from_container"], second["from_container"])]
        assert ids[0] != ids[1], "the second compile pinned a new program"
        assert sorted(p.name for p in (Path(root) / "progs").iterdir()) == ["from_container", "to_container"]
        assert "progs" not in loader.pinned_maps(config) and "policy" in loader.pinned_maps(config)
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


def test_a_compile_error_is_reported_with_the_compilers_words(tmp_path):
    (tmp_path / "broken.c").write_text("int f(void) { return nope; }\n")
    config = NodeConfig(datapath=DatapathConfig(bpfRoot=f"/sys/fs/bpf/capillary-pin-test-err-{os.getpid()}"))
    os.environ[loader.BPF_DIR_ENV] = str(tmp_path)
    try:
        try:
            loader.pin_maps("broken.c", config)
        except RuntimeError as exc:
            assert "compiling broken.c failed" in str(exc) and "nope" in str(exc)
        else:
            raise AssertionError("a broken source compiled")
    finally:
        del os.environ[loader.BPF_DIR_ENV]
        shutil.rmtree(config.datapath.bpfRoot, ignore_errors=True)
