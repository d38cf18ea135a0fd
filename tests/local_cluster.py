"""A multi-node Ray cluster on this machine, made of `ray start` processes, for tests.

    with LocalCluster(tmp) as cluster:
        address = cluster.start_head(cpus=1)
        cluster.add_node(cpus=1)
        cluster.wait_for_nodes(2)
        result = cluster.tunefm("search", "--address", address, ...)

Every node runs `ray start --block` in its own session, so each node's processes are
the descendants of one process id we started; `stop()` ends those and only those
(never `ray stop`, which would kill every Ray on the machine, the test session's own
included) and checks that none is left. Every node, and every driver run through
`tunefm()`, gets the same RAY_AUTH_MODE=token and token in its environment, so the
nodes authenticate to each other without touching ~/.ray.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tunefm(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The tunefm command in a fresh process with `env`, as a user runs it."""
    return subprocess.run([sys.executable, "-c", "from tunefm.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def fresh_ray_env(home: Path) -> dict[str, str]:
    """This environment without RAY_* settings and with a fresh ~/.ray: Ray's local defaults."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(home)}


def parent_pids() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it."""
    children, found, todo = parent_pids(), set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies aside): its leader may be gone and
    its other processes not our children."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, _, group = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                return True
    return False


class ClusterDrivers:
    """tunefm run against a cluster with its environment (`env`), the cluster's processes
    recorded (`observe`) before and after."""

    env: dict[str, str]

    def observe(self) -> None:
        raise NotImplementedError

    def tunefm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The tunefm command, run as a new user would, against this cluster."""
        self.observe()
        done = run_tunefm(self.env, *args, timeout=timeout)
        self.observe()
        return done

    def start_tunefm(self, *args: str) -> subprocess.Popen:
        """The tunefm command against this cluster, left running (stdout and stderr piped)."""
        self.observe()
        return subprocess.Popen([sys.executable, "-c", "from tunefm.cli import main; main()", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class LocalCluster(ClusterDrivers):
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        # Ray's session folder holds unix sockets, whose paths must stay short: not under pytest's tmp_path.
        self.temp_dir = tempfile.mkdtemp(prefix="tfm-ray-", dir="/tmp")
        # RAY_TMPDIR: what `ray start` leaves on the machine (ray_current_cluster) lands in our temp dir,
        # where a driver with this environment looks for it, and nowhere else.
        self.env = {**os.environ, "RAY_TMPDIR": self.temp_dir, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3", "RAY_USAGE_STATS_ENABLED": "0"}
        self.nodes: list[subprocess.Popen] = []
        self.seen: set[int] = set()  # every process of ours ever observed
        self.address: str | None = None

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        node = subprocess.Popen([RAY, "start", "--block", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=self.env, start_new_session=True)
        self.nodes.append(node)
        return node

    def start_head(self, cpus: int, gpus: int = 0) -> str:
        port = free_port()
        self._start("head", ["--head", f"--port={port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                             "--include-dashboard=false", f"--temp-dir={self.temp_dir}/ray"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                self.address = f"127.0.0.1:{port}"
                return self.address
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the head node did not listen on port {port}; see {self.log_dir / 'head.log'}")

    def add_node(self, cpus: int, gpus: int = 0) -> None:
        self._start(f"node{len(self.nodes)}", [f"--address={self.address}", f"--num-cpus={cpus}",
                                               f"--num-gpus={gpus}"])

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run Python code as a driver of this cluster (with its token)."""
        return subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def wait_for_nodes(self, count: int, timeout_s: float = 90) -> None:
        code = ("import time, ray\n"
                f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
                f"deadline = time.monotonic() + {timeout_s}\n"
                f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.monotonic() < deadline:\n"
                "    time.sleep(0.3)\n"
                "print(sum(n['Alive'] for n in ray.nodes()))\n")
        done = self.python(code, timeout=timeout_s + 60)
        if done.stdout.strip() != str(count):
            raise RuntimeError(f"expected {count} Ray nodes, got {done.stdout.strip()!r}: {done.stderr[-2000:]}")

    def node_ids(self) -> tuple[str, list[str]]:
        """(the head's node id, the other live nodes' ids)."""
        code = ("import json, ray\n"
                f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
                "print(json.dumps([(n['NodeID'], 'node:__internal_head__' in n['Resources'])"
                " for n in ray.nodes() if n['Alive']]))\n")
        nodes = json.loads(self.python(code).stdout.strip().splitlines()[-1])
        return next(n for n, head in nodes if head), [n for n, head in nodes if not head]

    def kill_node(self, index: int) -> None:
        """SIGKILL node `index` and every process of it at once: a machine that dies."""
        self.observe()
        for pid in descendants(self.nodes[index].pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nodes[index].wait(timeout=30)

    def observe(self) -> None:
        for node in self.nodes:
            self.seen |= descendants(node.pid)

    def stop(self) -> set[int]:
        """Stop our nodes by their process ids; returns any of our processes still alive."""
        self.observe()
        for node in reversed(self.nodes):  # workers first, the head last
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for node in self.nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while any(is_alive(p) for p in self.seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in [p for p in self.seen if is_alive(p)]:  # whatever did not stop: kill it, ours only
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes:
            if node.poll() is None:
                node.wait(timeout=10)
        time.sleep(0.5)
        return {p for p in self.seen if is_alive(p)}

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
