"""A scratch directory on bpffs for tests that pin maps of their own."""
from __future__ import annotations

import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_root(name: str):
    """Yield /sys/fs/bpf/capillary-NAME-<random>, removed with every pin in it afterwards."""
    path = Path(f"/sys/fs/bpf/capillary-{name}-{secrets.token_hex(3)}")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
