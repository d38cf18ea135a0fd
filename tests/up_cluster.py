"""A cluster launched from cluster/local.yaml with `ray up`, for tests: the commands a user runs.

    with UpCluster(tmp_path) as cluster:
        cluster.up()                                   # ray up -y cluster/local.yaml
        done = cluster.tunefm("search", "--address", "auto", ...)
        nodes = cluster.ray_nodes()                    # Ray's nodes with the autoscaler's instance ids
        cluster.down()                                 # ray down -y cluster/local.yaml

Every command gets a fresh HOME, its own RAY_TMPDIR and TMPDIR (where Ray records the
cluster's address and tunefm's provider keeps its state file) and a token of its own, so
nothing is read from or left in the machine's ~/.ray or /tmp/ray. `observe()` records
the cluster's processes (found by its token, tunefm/tune/one_machine.py) as they come and
go; `left()` says which of them still run. Exiting the block stops whatever of the
cluster still runs, by its token: a failed test leaves nothing either.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from local_cluster import ClusterDrivers, fresh_ray_env, is_alive

from tunefm.tune import one_machine

REPO = Path(__file__).resolve().parent.parent
LOCAL_YAML = "cluster/local.yaml"
BIN = Path(sys.executable).parent


class UpCluster(ClusterDrivers):
    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "home"
        self.home.mkdir()
        # Ray's session folder holds unix sockets, whose paths must stay short: not under pytest's tmp_path.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="tfm-up-", dir="/tmp"))
        self.env = {**fresh_ray_env(self.home), "RAY_TMPDIR": str(self.temp_dir), "TMPDIR": str(self.temp_dir),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # the node commands' `ray`, `python` and `tunefm` are this environment's
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.cluster_name = "tunefm-local"
        self.state_file = one_machine.state_path(self.cluster_name, str(self.temp_dir))
        self.seen: set[int] = set()
        self.token: str | None = None

    def ray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        self.observe()
        done = subprocess.run([str(BIN / "ray"), *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        self.observe()
        return done

    def up(self) -> subprocess.CompletedProcess:
        done = self.ray("up", "-y", LOCAL_YAML)
        if self.state_file.exists():
            self.token = self.state()["token"]
        self.observe()
        return done

    def down(self) -> subprocess.CompletedProcess:
        return self.ray("down", "-y", LOCAL_YAML)

    def state(self) -> dict:
        """The provider's record of the cluster's nodes (no nodes once torn down)."""
        return one_machine.read_state(self.cluster_name, str(self.temp_dir))

    def workers(self) -> dict[str, dict]:
        """instance id -> record, for the worker nodes the provider holds now."""
        return {i: n for i, n in self.state()["nodes"].items() if n["tags"]["ray-node-type"] == "worker"}

    def ray_nodes(self) -> list[dict]:
        """Each node Ray's autoscaler knows: its Ray node id, instance id (the provider's), type and state."""
        code = ("import json, ray\n"
                "from ray.autoscaler.v2.sdk import get_cluster_status\n"
                "ray.init(address='auto', logging_level='ERROR')\n"
                "status = get_cluster_status(ray.get_runtime_context().gcs_address)\n"
                "print('NODES', json.dumps([dict(node_id=n.node_id, instance_id=n.instance_id,"
                " type=n.ray_node_type_name, status=n.node_status) for n in status.active_nodes + status.idle_nodes + status.failed_nodes]))\n")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        # Ray may print lines of its own on stdout
        return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("NODES "))[6:])

    def node_processes(self, instance_id: str | None = None) -> list:
        return one_machine.node_processes(self.token, [instance_id] if instance_id else None) if self.token else []

    def observe(self) -> None:
        self.seen |= {p.pid for p in self.node_processes()}

    def left(self) -> set[int]:
        """Processes of this cluster ever seen, or found by its token, that still run."""
        return {p for p in self.seen if is_alive(p)} | {p.pid for p in self.node_processes()}

    def __enter__(self) -> "UpCluster":
        return self

    def __exit__(self, *exc) -> None:
        if self.token:
            one_machine.stop_processes(self.node_processes(), grace_s=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
