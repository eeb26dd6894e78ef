"""Where a service's time goes: py-spy sampling a running service, summed into top lines.

    with Profile(pid, "policyd") as prof:
        ...                                  # the work to look at
    prof.top()                               # {"samples": N, "self": [...], "inclusive": [...]}

py-spy runs with --nonblocking (it reads the stacks without stopping the process, so the
service's timing is disturbed as little as possible) and --format raw (collapsed stacks:
"frame;frame;... COUNT", a frame "function (file:line)"). Idle threads are left out: what is
counted is time spent running Python or waiting in a call it made (GIL included).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

RATE = 250                  # samples per second
TOP = 12
KEPT = 60                   # rows kept per list in the results, for filtering later


def py_spy() -> str | None:
    """The py-spy next to this Python (the venv's), else one on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profile:
    def __init__(self, pid: int, name: str, exclude: tuple[str, ...] = ()) -> None:
        self.pid, self.name, self.exclude = pid, name, exclude
        self.exe = py_spy()
        self.out = Path(tempfile.mkstemp(prefix=f"capillary-pyspy-{name}-", suffix=".txt")[1])
        self.proc: subprocess.Popen | None = None
        self.error = ""

    def __enter__(self) -> "Profile":
        if not self.exe:
            self.error = "py-spy is not installed"
            return self
        self.proc = subprocess.Popen([self.exe, "record", "--pid", str(self.pid), "--rate", str(RATE),
                                      "--nonblocking", "--format", "raw", "--output", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)            # py-spy writes its output on SIGINT
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if self.proc.returncode not in (0, -signal.SIGINT):
            self.error = f"py-spy exited {self.proc.returncode}: {err.strip()[-300:]}"

    def top(self, count: int = KEPT) -> dict:
        try:
            text = self.out.read_text()
        except OSError as exc:
            return {"service": self.name, "error": self.error or str(exc), "samples": 0}
        finally:
            self.out.unlink(missing_ok=True)
        return {"service": self.name, "error": self.error, **summarize(text, count, self.exclude)}


def _function(frame: str) -> str:
    """"handle (services/policyd/service.py:210)" -> "handle (services/policyd/service.py)";
    paths are cut to what follows site-packages/ or the repository."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "dist-packages/", "/services/", "/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1] if marker != "/services/" else "services/" + path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def summarize(text: str, count: int = KEPT, exclude: tuple[str, ...] = ()) -> dict:
    """Self and inclusive sample counts by function from collapsed stacks; stacks with a
    frame containing one of EXCLUDE are only counted, as "excluded"."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = excluded = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [_function(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if any(marker in frame for frame in frames for marker in exclude):
            excluded += int(n)
            continue
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)

    def rows(counter: Counter) -> list[dict]:
        return [{"function": f, "samples": c, "share": c / total} for f, c in counter.most_common(count)]

    return {"samples": total, "seconds": total / RATE, "excluded": excluded, "exclude": list(exclude),
            "self": rows(own), "inclusive": rows(inclusive)}


def lines(profile: dict, kind: str = "inclusive", count: int = TOP) -> list[str]:
    """The top COUNT rows as text, "  23.4%  function (file)"."""
    if not profile.get("samples"):
        return [f"  (no samples: {profile.get('error') or 'the service was idle'})"]
    return [f"  {row['share'] * 100:5.1f}%  {row['function']}" for row in profile[kind][:count]]


# ---- perf: where the kernel's time goes ---------------------------------------------------------

def perf_top(work, seconds: float, comm: str, count: int = TOP) -> dict:
    """`perf record -a` (every CPU) for SECONDS while WORK() runs; the top COUNT symbols by
    their own share of the samples taken in processes named COMM (the kernel's work done
    on their behalf, softirqs included, counts; other users of this machine do not)."""
    exe = shutil.which("perf")
    if not exe:
        return {"error": "perf is not installed", "top": []}
    data = Path(tempfile.mkstemp(prefix="capillary-perf-", suffix=".data")[1])
    try:
        rec = subprocess.Popen([exe, "record", "-a", "-q", "-o", str(data), "--", "sleep", str(seconds)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            work()
        finally:
            _, err = rec.communicate(timeout=seconds + 60)
        if rec.returncode != 0:
            return {"error": f"perf record exited {rec.returncode}: {err.strip()[-300:]}", "top": []}
        # relative: shares of COMM's samples, not of every CPU's
        out = subprocess.run([exe, "report", "-i", str(data), "--stdio", "--no-children", "--comms", comm,
                              "--percentage", "relative", "--sort", "dso,symbol"],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        data.unlink(missing_ok=True)
    rows = [" ".join(line.split()).removesuffix(" - -") for line in out.splitlines()
            if "%" in line and not line.lstrip().startswith("#")]
    return {"error": "", "seconds": seconds, "comm": comm, "top": rows[:count]}
