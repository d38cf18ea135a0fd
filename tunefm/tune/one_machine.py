"""A Ray cluster whose nodes are all on this machine, launched by `ray up cluster/local.yaml`.

    ray up -y cluster/local.yaml        # the head: `ray start --head` here, with its autoscaler
    tunefm search --address auto ...    # trials wait; the autoscaler adds worker nodes for them
    ray down -y cluster/local.yaml      # every process of the cluster stopped, its files removed

The cluster YAML names this module as an external node provider
(`provider: {type: external, module: tunefm.tune.one_machine.OneMachineNodeProvider}`).
A node is a set of processes on this machine, as in Ray's fake multi-node provider: it
advertises the resources its node type declares (logical GPUs included) and gets the id
`<cluster>-<type>-<n>`. Unlike that provider, which works only under `ray start
--autoscaling-config` (Ray 2.60's wheel lacks the example.yaml its defaults come from, its
head is a placeholder it never launches, and it starts workers without their setup or start
commands), every node here is set up the way `ray up` sets up a cloud machine: the node
type's setup commands and start commands run through `OneMachineCommandRunner`, in a shell
on this machine instead of over SSH, with `$RAY_HEAD_IP` and the node type's resources
filled in by Ray's own node updater.

Which processes are a node's: each command the runner runs gets the node's id in
RAY_CLOUD_INSTANCE_ID (the variable Ray's autoscaler v2 matches nodes by) and the cluster's
own token in TUNEFM_ONE_MACHINE_CLUSTER; every process `ray start` and the raylet start
inherits both. Stopping a node stops those processes, and only those: `ray stop`, which
stops every Ray process on the machine (another cluster's, a test session's), means "stop
this node" in the runner's shell.

Several processes share the cluster's state (`ray up`, the autoscaler on the head, `ray
down`): nodes, their tags and the files copied onto them live in one JSON file in the
temporary directory, written under an exclusive lock and read under a shared one. It is
removed with the last node.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import click
import psutil
from ray.autoscaler.command_runner import CommandRunnerInterface
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

from tunefm.tune import ray_internals

CLUSTER_VARIABLE = "TUNEFM_ONE_MACHINE_CLUSTER"  # the cluster's token, in each of its processes
NODE_VARIABLE = "RAY_CLOUD_INSTANCE_ID"  # the node's id, in each of its processes (Ray's own use of it too)
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL what still runs after this long (a raylet drains for 10 s and more)


def state_path(cluster_name: str, temp_dir: str | None = None) -> Path:
    """Where the cluster's state lives: the temporary directory of `ray up` and of the nodes it starts."""
    return Path(temp_dir or tempfile.gettempdir()) / f"tunefm-cluster-{cluster_name}.json"


def parse_state(text: str) -> dict[str, Any]:
    return json.loads(text) if text.strip() else {"token": secrets.token_hex(8), "created": 0, "nodes": {}}


@contextlib.contextmanager
def locked_state(cluster_name: str) -> Iterator[dict[str, Any]]:
    """The cluster's state, changed in place, written back on leaving; an exclusive lock meanwhile.

    The file is removed when no node is left: nothing of a torn-down cluster stays behind."""
    path = state_path(cluster_name)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        state = parse_state(f.read())
        yield state
        if state["nodes"]:
            f.seek(0)
            f.truncate()
            f.write(json.dumps(state, indent=1))
            f.flush()
        else:
            path.unlink(missing_ok=True)  # still under the lock: a concurrent writer reopens a new file


def read_state(cluster_name: str, temp_dir: str | None = None) -> dict[str, Any]:
    """The cluster's state as last written (no nodes once torn down), read under a shared lock."""
    try:
        with open(state_path(cluster_name, temp_dir)) as f:
            fcntl.flock(f, fcntl.LOCK_SH)  # a writer rewrites it in place under its exclusive lock
            return parse_state(f.read())
    except FileNotFoundError:
        return parse_state("")


def node_processes(token: str, node_ids: list[str] | None = None) -> list[psutil.Process]:
    """The live processes of the nodes `node_ids` of the cluster with `token` (all its nodes' for
    None), and their descendants, leaving out this process and its ancestors (the shell that runs
    `ray stop`)."""
    ours = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter():
        try:
            env = process.environ()
        except (psutil.Error, OSError):
            continue  # exited, or not ours to read
        if env.get(CLUSTER_VARIABLE) == token and (node_ids is None or env.get(NODE_VARIABLE) in node_ids):
            found[process.pid] = process
            with contextlib.suppress(psutil.Error):
                found.update({child.pid: child for child in process.children(recursive=True)})
    return [p for pid, p in found.items() if pid not in ours]


def gcs_ports(processes: list[psutil.Process]) -> set[int]:
    """The ports of the GCS servers among `processes`: a head's."""
    ports = set()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            args = process.cmdline()
            if args and Path(args[0]).name == "gcs_server":
                ports |= {int(a.split("=", 1)[1]) for a in args if a.startswith("--gcs_server_port=")}
    return ports


def stop_processes(processes: list[psutil.Process], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (Ray's processes shut down cleanly on it), then SIGKILL whatever still runs."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_nodes(token: str, node_ids: list[str] | None) -> None:
    """Stop the nodes' processes together; a stopped head's address leaves this machine's record."""
    processes = node_processes(token, node_ids)
    heads = gcs_ports(processes)
    stop_processes(processes)
    for port in heads:
        ray_internals.forget_stopped_head(port)


class OneMachineNodeProvider(NodeProvider):
    """Ray's node provider interface over nodes that are processes on this machine."""

    def _nodes(self) -> dict[str, dict[str, Any]]:
        return read_state(self.cluster_name)["nodes"]

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return [node_id for node_id, node in self._nodes().items()
                if all(node["tags"].get(k) == v for k, v in tag_filters.items())]

    def is_running(self, node_id: str) -> bool:
        return node_id in self._nodes()

    def is_terminated(self, node_id: str) -> bool:
        return node_id not in self._nodes()

    def node_tags(self, node_id: str) -> dict[str, str]:
        return dict(self._nodes()[node_id]["tags"])

    def external_ip(self, node_id: str) -> str:
        return "127.0.0.1"

    def internal_ip(self, node_id: str) -> str:
        return "127.0.0.1"

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        with locked_state(self.cluster_name) as state:
            state["nodes"][node_id]["tags"].update(tags)

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        """Record `count` new nodes: nothing runs on them until their setup and start commands do."""
        created = {}
        with locked_state(self.cluster_name) as state:
            for _ in range(count):
                state["created"] += 1
                kind = tags.get(TAG_RAY_USER_NODE_TYPE) or tags.get(TAG_RAY_NODE_KIND, "node")
                node_id = f"{self.cluster_name}-{kind}-{state['created']}"
                state["nodes"][node_id] = {"tags": dict(tags), "copied": []}
                created[node_id] = {}
        return created

    def terminate_node(self, node_id: str) -> None:
        self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> None:
        """Stop the nodes' processes (only theirs, all at once) and remove the files copied onto them."""
        state = read_state(self.cluster_name)
        known = [node_id for node_id in node_ids if node_id in state["nodes"]]
        if not known:
            return
        stop_nodes(state["token"], known)
        for node_id in known:
            for copied in state["nodes"][node_id]["copied"]:
                path = Path(copied)
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        with locked_state(self.cluster_name) as state:
            for node_id in known:
                state["nodes"].pop(node_id, None)

    def get_command_runner(self, log_prefix: str, node_id: str, auth_config: dict[str, Any], cluster_name: str,
                           process_runner: Any, use_internal_ip: bool,
                           docker_config: dict[str, Any] | None = None) -> CommandRunnerInterface:
        return OneMachineCommandRunner(cluster_name, node_id)

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return cluster_config


# Defined in every shell the runner starts: `ray stop` stops this node's processes, not the machine's.
STOP_ONLY_THIS_NODE = (f'ray() {{ if [ "$1" = stop ]; then "{sys.executable}" -m tunefm.tune.one_machine stop; '
                       'else command ray "$@"; fi; }\n')


def copy(source: str, target: str) -> bool:
    """Copy a file or folder on this machine (`~` expanded); True when `target` did not exist before."""
    source_path, target_path = Path(source).expanduser(), Path(target).expanduser()
    if source_path.resolve() == target_path.resolve():
        return False  # a head's file, "copied" to a worker on the same disk
    created = not target_path.exists()
    if source_path.is_dir():
        shutil.copytree(source_path, target_path, dirs_exist_ok=True)
    else:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_path, target_path)
    return created


class OneMachineCommandRunner(CommandRunnerInterface):
    """Runs a node's commands in bash on this machine, marked as that node's; copies files locally."""

    def __init__(self, cluster_name: str, node_id: str):
        self.cluster_name = cluster_name
        self.node_id = node_id

    def _environment(self, variables: dict[str, object] | None) -> dict[str, str]:
        token = read_state(self.cluster_name)["token"]
        env = {**os.environ, CLUSTER_VARIABLE: token, NODE_VARIABLE: self.node_id}
        for name, value in (variables or {}).items():
            env[name] = value if isinstance(value, str) else json.dumps(value)
        return env

    def run(self, cmd: str | None = None, timeout: int = 120, exit_on_fail: bool = False,
            port_forward: list | None = None, with_output: bool = False,
            environment_variables: dict[str, object] | None = None, run_env: str = "auto",
            ssh_options_override_ssh_key: str = "", shutdown_after_run: bool = False) -> bytes | str:
        # The node's home is this machine's: commands run from it, as they would after an SSH login.
        done = subprocess.run(["bash", "-c", STOP_ONLY_THIS_NODE + (cmd or "true")], cwd=Path.home(),
                              env=self._environment(environment_variables),
                              stdout=subprocess.PIPE if with_output else None, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise click.ClickException(f"command failed on {self.node_id} (exit {done.returncode}): {cmd}")
        return done.stdout if with_output else ""

    def run_rsync_up(self, source: str, target: str, options: dict | None = None) -> None:
        """Copy `source` to `target` here, recording what the copy created so that `ray down` removes it."""
        if copy(source, target):
            with locked_state(self.cluster_name) as state:
                state["nodes"][self.node_id]["copied"].append(os.path.expanduser(target))

    def run_rsync_down(self, source: str, target: str, options: dict | None = None) -> None:
        copy(source, target)

    def remote_shell_command_str(self) -> str:
        return "bash"

    def run_init(self, *, as_head: bool, file_mounts: dict[str, str], sync_run_yet: bool) -> bool | None:
        return None


def main() -> None:
    """`python -m tunefm.tune.one_machine stop`: what `ray stop` runs in a node's shell."""
    if sys.argv[1:] != ["stop"] or CLUSTER_VARIABLE not in os.environ:
        sys.exit("Error: `python -m tunefm.tune.one_machine stop` is what `ray stop` runs in a shell of a node of "
                 "cluster/local.yaml; elsewhere use `ray down cluster/local.yaml`")
    node_id = os.environ.get(NODE_VARIABLE)
    start = time.monotonic()
    stop_nodes(os.environ[CLUSTER_VARIABLE], [node_id] if node_id else None)
    print(f"Stopped the Ray processes of node {node_id} ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
