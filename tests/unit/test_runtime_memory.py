"""The C allocator settings every service process makes at its start."""
import subprocess
import sys

from services.runtime.memory import hand_back_freed_memory


def test_glibc_takes_the_settings():
    assert hand_back_freed_memory() is True


def test_a_freed_large_table_goes_back_to_the_kernel():
    """A dict of a million entries, made and dropped twice in a process with the settings:
    its resident size comes back down after the second (the default glibc kept it)."""
    script = """
import sys
from services.runtime.memory import hand_back_freed_memory
hand_back_freed_memory()
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
base = rss()
for _ in range(2):
    table = dict.fromkeys(range(1_000_000))
    del table
print(rss() - base)
"""
    grown = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                               cwd=".").stdout)
    assert grown < 16 * 1024, f"{grown} KiB still resident after the table was dropped"
