"""Install the CNI plugin where runtimes look for it: a small shell wrapper per directory.

    python -m services.cni.install DIR [DIR ...]

`make setup` installs it into /opt/cni/bin and /usr/lib/cni; a test or benchmark installs
its own copy into a directory of its own (so checkouts side by side never run each other's
code). The wrapper runs this interpreter on services.cni.launch with the module path the
plugin needs: this checkout and the directories holding msgpack and PyYAML (YAML only for a
config that names the node's config file). The interpreter starts with -I -S (no site, no
.pth files, no PYTHON* variables): what the runtime's environment holds has no say in which
code the plugin runs, and site's start-up (~10 ms here) is part of every ADD.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

NAME = "capillary"


def module_path() -> list[str]:
    """What the plugin's module path must hold: this checkout (or the installed services
    package's parent) and the directories of msgpack and PyYAML."""
    import msgpack
    import yaml

    import services
    path = [str(Path(services.__file__).resolve().parent.parent)]
    for module in (msgpack, yaml):
        where = str(Path(module.__file__).resolve().parent.parent)
        if where not in path:
            path.append(where)
    return path


def command(python: str | None = None) -> list[str]:
    """The command the wrapper runs (before the runtime's own arguments)."""
    path = module_path()
    launch = Path(path[0]) / "services" / "cni" / "launch.py"
    return [python or sys.executable, "-I", "-S", str(launch), os.pathsep.join(path)]


def wrapper(python: str | None = None) -> str:
    """The wrapper's text: exec the plugin on PYTHON (default: this interpreter)."""
    return ("#!/bin/sh\n# capillary CNI plugin (installed by services.cni.install)\n"
            f"exec {' '.join(_quote(arg) for arg in command(python))} \"$@\"\n")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def compile_plugin() -> None:
    """Byte-compile the services package, so no ADD compiles it from source: where
    PYTHONDONTWRITEBYTECODE is set for every process (CI and these machines), nothing else
    writes a .pyc for a checkout, and a plugin compiling itself costs more than it runs."""
    import compileall
    compileall.compile_dir(str(Path(module_path()[0]) / "services"), quiet=1)


def install(directory: Path, python: str | None = None) -> Path:
    """Write DIRECTORY/capillary (atomically, mode 0755) unless it already says the same,
    and byte-compile what it runs."""
    compile_plugin()
    text = wrapper(python)
    target = directory / NAME
    try:
        if target.read_text() == text:
            return target
    except OSError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{NAME}.{os.getpid()}"
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m services.cni.install DIR [DIR ...]", file=sys.stderr)
        return 2
    for directory in argv:
        print(f"CNI plugin: {install(Path(directory))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
