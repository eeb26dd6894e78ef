"""A compile does not leave clang's heap behind in the service that ran it."""
import subprocess
import sys
import textwrap

from tests.support.node import REPO

ROOT = "/sys/fs/bpf/capillary-loader-memory-test"

# In a fresh interpreter, as a service runs it: the compile in a worker thread.
SCRIPT = textwrap.dedent(f"""
    import shutil, threading
    from services.datapath import loader
    from services.runtime.config import DatapathConfig, NodeConfig

    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])

    config = NodeConfig(datapath=DatapathConfig(bpfRoot="{ROOT}"))
    try:
        worker = threading.Thread(target=loader.compile_source, args=("policyd_maps.c", config))
        worker.start()
        worker.join()
        print(anon_kb())
    finally:
        shutil.rmtree("{ROOT}", ignore_errors=True)
""")


def test_compile_returns_the_compiler_heap():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    anon_mb = int(out.stdout.split()[-1]) / 1024
    # ~100 MB without the trim, ~23 MB with it (bcc and Python themselves).
    assert anon_mb < 50, f"{anon_mb:.0f} MB of private memory after a compile"
