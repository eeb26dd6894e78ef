"""A capillary deployment with Docker Compose for tests: the engine (started when none
runs), the image (scripts/compose-image.sh), and compose.yaml brought up with a node of its
own (project, state dir, pod CIDR, device names, bpffs root, NATS and metrics ports) so it
cannot collide with a node of the end-to-end tests or with a user's deployment."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.node import REPO, free_port

COMPOSE = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
SERVICES = ("nats", "policyd", "routed", "flowd", "endpointd", "web")
TIMINGS: dict[str, float] = {}      # what took how long, reported at the end of the run


def run(argv: list[str], check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Engine:
    """dockerd: the running one, else one started here and stopped by stop().

    One started here is private to the test: no iptables rules, no bridge and no change to
    ip_forward (builds use the host network, the services use it anyway), so it leaves
    nothing in the host's network configuration and disturbs no other test on the machine."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def running() -> bool:
        return subprocess.run(["docker", "info"], capture_output=True).returncode == 0

    def ensure(self, timeout: float = 60) -> None:
        if self.running():
            return
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["dockerd", "--iptables=false", "--ip-forward=false", "--bridge=none"],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if self.running():
                return
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"dockerd did not answer within {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Deployment:
    """compose.yaml run as project PROJECT with a node config of its own, set through
    the environment file compose reads (--env-file)."""

    def __init__(self, workdir: Path, image: str, project: str = "capillary-compose-test",
                 **settings: str) -> None:
        self.workdir = workdir
        self.image = image
        self.project = project
        self.name = "compose-test"
        self.state_dir = workdir / "state"
        self.pod_cidr = "10.247.0.0/24"
        self.lxc_prefix = "cmp"
        self.router_device, self.router_peer = "cmp_host", "cmp_net"
        self.bpf_root = "/sys/fs/bpf/capillary-compose-test"
        self.nats_port = free_port()
        self.env = {
            "CAPILLARY_IMAGE": image, "CAPILLARY_NODE": self.name, "CAPILLARY_STATE_DIR": str(self.state_dir),
            "CAPILLARY_POD_CIDR": self.pod_cidr, "CAPILLARY_BPF_ROOT": self.bpf_root,
            "CAPILLARY_ROUTER_DEVICE": self.router_device, "CAPILLARY_ROUTER_PEER": self.router_peer,
            "CAPILLARY_LXC_PREFIX": self.lxc_prefix, "CAPILLARY_NATS_PORT": str(self.nats_port),
            "CAPILLARY_HEALTH_INTERVAL": "2s",
            # beyond loopback: NATS with TLS, which every container and the host's CLI use
            "CAPILLARY_NATS_HOST": "0.0.0.0",
            **{f"CAPILLARY_METRICS_{s.upper()}": str(free_port()) for s in ("endpointd", "policyd", "routed", "flowd")},
            "CAPILLARY_WEB_PORT": str(free_port()),
            **settings,
        }
        self.env_file = workdir / "compose.env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))

    # ---- compose and the CLI -------------------------------------------------------------

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        # The repository's .env must not leak in: only the test's file and variables count.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPILLARY_", "COMPOSE_"))}
        return run([*COMPOSE, "--project-name", self.project, "--env-file", str(self.env_file),
                    "--file", str(REPO / "compose.yaml"), *args], check=check, timeout=timeout, env=env, cwd=REPO)

    def exec(self, service: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, *argv, check=check, timeout=60)

    def run_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """The CLI in a one-off container of the `cli` service (admin's credentials)."""
        return self.compose("run", "--rm", "-T", "cli", "capillary", *args, check=check, timeout=120)

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.yaml"   # written by the containers for the host's CLI

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """The CLI on the host, against the deployment."""
        return run([sys.executable, "-m", "services.cli.main", "--config", str(self.config_path), *args],
                   check=check, input=input, timeout=60, cwd=REPO)

    def apply(self, text: str) -> None:
        self.cli("apply", "-f", "-", input=text)

    def pods(self) -> dict[str, dict]:
        items = json.loads(self.cli("get", "pods", "-A", "-o", "json").stdout)["items"]
        return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in items}

    def status(self) -> dict:
        return json.loads(self.cli("status", "-o", "json", check=False).stdout)

    # ---- life cycle --------------------------------------------------------------------------

    def containers(self, all: bool = True) -> dict[str, dict]:
        """The project's containers (including one-off `run` ones), by name."""
        argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"]
        ids = run(argv + (["-a"] if all else [])).stdout.split()
        if not ids:
            return {}
        return {c["Name"].lstrip("/"): c for c in json.loads(run(["docker", "inspect", *ids]).stdout)}

    def health(self) -> dict[str, str]:
        out = {}
        for c in self.containers().values():
            service = c["Config"]["Labels"].get("com.docker.compose.service", "?")
            state = c["State"]
            out[service] = state.get("Health", {}).get("Status") if state["Running"] else state["Status"]
        return out

    def up(self, timeout: float = 300) -> float:
        """`up -d`, then wait until every service's healthcheck passes; the seconds it took."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.compose("up", "-d", "--no-build")
        while time.monotonic() - started < timeout:
            health = self.health()
            if sorted(health) == sorted(SERVICES) and set(health.values()) == {"healthy"}:
                return time.monotonic() - started
            time.sleep(0.25)
        logs = self.compose("logs", "--no-color", "--tail", "30", check=False).stdout
        raise AssertionError(f"not healthy within {timeout}s: {self.health()}\n{logs}")

    def down(self, volumes: bool = False) -> None:
        self.compose("down", *(["--volumes"] if volumes else []), "--remove-orphans", timeout=120)

    def purge(self) -> list[str]:
        """Remove the node's pods, devices, rules, maps and state with the CLI in a one-off
        container (as a user would; if that cannot run, with the host's CLI), then the
        project's volume, which `run` creates."""
        proc = self.compose("run", "--rm", "--no-deps", "-T", "cli", "capillary", "down", "--purge",
                            check=False, timeout=120)
        if proc.returncode != 0:
            print(f"purge in a container failed ({proc.returncode}): {proc.stderr}", file=sys.stderr)
            if self.config_path.exists():
                self.cli("down", "--purge", check=False)
        self.down(volumes=True)           # `run` made the project's volume again
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return proc.stdout.splitlines()

    def docker_leftovers(self) -> list[str]:
        """The project's containers and volumes."""
        out = [f"container {name}" for name in self.containers()]
        volumes = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"])
        return out + [f"volume {v}" for v in volumes.stdout.split()]

    def leftovers(self) -> list[str]:
        """Anything of this deployment still on the host."""
        out = self.docker_leftovers()
        for line in run(["ip", "-o", "link"]).stdout.splitlines():
            name = line.split(": ")[1].split("@")[0]
            if name.startswith(self.lxc_prefix) or name in (self.router_device, self.router_peer):
                out.append(f"link {name}")
        out += [f"netns {p}" for p in Path("/run/netns").glob(f"cap-{self.name}_*")]
        if Path(self.bpf_root).exists():
            out.append(f"bpffs {self.bpf_root}")
        if self.pod_cidr in run(["iptables-save"]).stdout:
            out.append(f"iptables rules for {self.pod_cidr}")
        pattern = f"{self.state_dir}|services\\.(endpointd|policyd|routed|flowd) --config /etc/capillary/"
        ps = run(["pgrep", "-af", pattern], check=False).stdout
        out += [f"process {line}" for line in ps.splitlines()]
        if self.state_dir.exists():
            out.append(f"state {self.state_dir}")
        return out
