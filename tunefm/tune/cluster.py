"""The Ray cluster a search runs on: starting or joining it, its nodes, what a trial asks of them.

    started, dashboard, no_dashboard = cluster.start_ray(address)   # a local Ray, or join `address`
    nodes = cluster.connect(cpus_per_trial=1, gpus_per_trial=None)   # fails now if no node fits a trial
    resources = cluster.trial_resources(1, None, nodes.has_gpus)     # config -> PlacementGroupFactory

A local Ray gets its dashboard on 127.0.0.1 with token authentication on. Nodes count
as the live ones plus the node types an autoscaler may still start, so a `ray up`
cluster with no GPU worker running yet is not refused. A trial takes its model's GPU
share where the cluster has GPUs, unless --gpus-per-trial says otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import yaml
from ray.tune import PlacementGroupFactory

from tunefm.engine import devices, models
from tunefm.errors import UserError
from tunefm.tune import ray_internals


def trial_resources(cpus: float, gpus_per_trial: float | None, cluster_has_gpus: bool) -> Callable[[dict], object]:
    """config -> PlacementGroupFactory: each model's GPU share unless --gpus-per-trial says otherwise."""

    def resources(config: dict):
        gpu = gpus_per_trial if gpus_per_trial is not None else models.get(config["model"]).gpu_fraction
        bundle = {"CPU": cpus}
        if cluster_has_gpus and gpu > 0:
            bundle["GPU"] = gpu
        return PlacementGroupFactory([bundle])

    return resources


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of each live node of the connected Ray cluster."""

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def local_node() -> list[dict[str, float]]:
    """What a local Ray would detect here, known before starting one."""

    return [{"CPU": len(os.sched_getaffinity(0)), "GPU": devices.count()}]


def check_resources_fit(cpus: float, gpus: float | None, nodes: list[dict[str, float]]) -> None:
    """Fail now, not pending forever, when no node can ever hold one trial."""
    need = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    for resource, amount in need.items():
        most = max((n.get(resource, 0) for n in nodes), default=0)
        if most < amount:
            flag = "--cpus-per-trial" if resource == "CPU" else "--gpus-per-trial"
            raise UserError(f"{flag} {amount:g} can never be met: the largest node has {most:g} {resource}")


def check_reachable(address: str, timeout_s: float = 5.0) -> str:
    """Fail in seconds on a host:port with nothing listening; ray.init would retry for minutes.
    Returns the address checked (what `auto` resolved to)."""
    given = address
    if address == "auto":
        address = ray_internals.auto_address()
        if address is None:
            raise UserError("--address auto found no Ray cluster on this machine (RAY_ADDRESS is unset and no "
                            "`ray start` is running); start one with `ray start --head`, or leave out --address "
                            "to run on a local Ray")
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return address  # ray:// is Ray Client's; anything else ray.init checks itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        found = f" (--address auto found {address})" if given == "auto" else ""
        raise UserError(f"no Ray cluster answers at --address {given}{found} ({e.strerror or e}); "
                        f"start one with `ray start --head` or give its head node's address") from None
    return address


def autoscaler_node_types(config: dict) -> list[tuple[str, dict[str, float], int, int]]:
    """(name, resources, min_workers, max_workers) of each worker node type of a `ray up` config."""
    limit = int(config.get("max_workers", 0))
    return [(name, dict(node_type.get("resources") or {}), int(node_type.get("min_workers", 0)),
             min(int(node_type.get("max_workers", limit)), limit))
            for name, node_type in config.get("available_node_types", {}).items()
            if name != config.get("head_node_type")]


def publish_node_types(config_path: str, address: str | None = None) -> list[tuple[str, dict[str, float], int, int]]:
    """Tell the Ray cluster at `address` (default: the one on this machine) which worker node types
    its autoscaler may launch, from the config `ray up` copied to the head (~/ray_bootstrap_config.yaml).

    Run by the head start commands of cluster/*.yaml: Ray's own autoscaler keeps its node types to
    itself, and without them a search on a cluster whose GPU workers are not running yet could not
    tell "wait for the autoscaler" from "no node will ever hold this trial"."""
    try:
        config = yaml.safe_load(Path(config_path).expanduser().read_text())
    except OSError as e:
        raise UserError(f"cannot read the cluster config {config_path}: {e}") from None
    except yaml.YAMLError as e:  # PyYAML's message spans lines: its problem and where
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{config_path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise UserError(f"{config_path} is not a Ray cluster config: it has no available_node_types")
    node_types = autoscaler_node_types(config)
    ray_internals.publish_node_types(check_reachable(address or "auto"), node_types)
    return node_types


def start_ray(address: str | None, log_to_driver: bool = False,
              **local_options) -> tuple[bool, str | None, str | None]:
    """Join `address`, or start a local Ray (`local_options` such as num_cpus go to its
    ray.init); returns (we started it, dashboard URL, why a local Ray has no dashboard).

    Without an address the Ray is always a new local one: `address="local"` makes
    ray.init ignore RAY_ADDRESS, a `ray start` cluster running on this machine, and
    the address a dead one left behind (each of which a bare ray.init() would try to
    join). It gets its dashboard on 127.0.0.1 only, with token authentication on
    (Ray's local default since 2.59 when RAY_AUTH_MODE is unset; `announce` warns when
    it is off); the token is in ~/.ray/auth_token and `ray get-auth-token` prints it.
    Where the dashboard cannot start (a dependency missing or too old, with which asking Ray
    for one raises a bare Exception), Ray runs without it and the reason is returned, for one
    warning line.
    Without `log_to_driver` the terminal shows tunefm's lines only: no worker output ("Checkpoint
    successfully created" per trial and epoch), no raylet warnings; each trial's errors are in its
    error.txt, and tunefm prints a line per failed trial.
    """

    if address:
        check_reachable(address)
    if ray.is_initialized():
        return False, None, None
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    no_dashboard = None
    try:
        # Ray's own "Connected"/"Started" lines and its "token authentication is enabled"
        # notice repeat what tunefm prints itself, and would make a user error two lines.
        ray_internals.quiet_auth_notice()
        quiet = dict(log_to_driver=log_to_driver, logging_level=logging.WARNING)
        if address:
            context = ray.init(address=address, **quiet)
        else:
            ray_internals.quiet_worker_pool_warning(int(local_options.get("num_cpus") or len(os.sched_getaffinity(0))))
            # include_dashboard=None: Ray starts the dashboard where it can and goes on without it
            # where it cannot (True would raise a bare Exception, after starting GCS)
            no_dashboard = ray_internals.dashboard_dependency_error()
            with ray_internals.quiet_dashboard_failure():
                context = ray.init(**{"address": "local", "include_dashboard": None, "dashboard_host": "127.0.0.1",
                                      **quiet, **local_options})
            if not getattr(context, "dashboard_url", None):
                no_dashboard = no_dashboard or "it did not come up: see dashboard.err in the Ray session's logs"
    except Exception as e:  # Ray raises bare Exceptions too (a raylet that did not come up)
        also = (f"; Ray's dashboard modules cannot be imported here ({no_dashboard}), and its agent on each node "
                f"needs them: install what ray[default] needs" if no_dashboard else "")
        raise UserError(f"could not start or join {where}: {_first_line(e)}{also}") from None
    url = getattr(context, "dashboard_url", None) if no_dashboard is None else None
    return True, (f"http://{url}" if url and not url.startswith("http") else url), no_dashboard


def _first_line(error: BaseException) -> str:  # Ray's messages may span lines
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def gcs_address() -> str | None:
    """The address of the Ray cluster this process is connected to (recorded in run.json)."""

    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        return None


@dataclass
class Cluster:
    """The connected Ray cluster's nodes: live ones, and types its autoscaler may still start."""

    nodes: list[dict[str, float]]
    launchable: list[dict[str, float]]

    @property
    def has_gpus(self) -> bool:
        return any(n.get("GPU", 0) > 0 for n in self.nodes + self.launchable)

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1 or bool(self.launchable)

    @property
    def gpus(self) -> int:
        """GPUs of the live nodes."""
        return int(sum(n.get("GPU", 0) for n in self.nodes))

    @property
    def cpus(self) -> float:
        """CPUs of the live nodes."""
        return float(sum(n.get("CPU", 0) for n in self.nodes))

    def cpu_slots(self, cpus_per_trial: float) -> int:
        """Trials of `cpus_per_trial` CPUs that the live nodes hold at once (at least 1)."""
        return max(1, sum(int(n.get("CPU", 0) // cpus_per_trial) for n in self.nodes))


def connect(cpus_per_trial: float, gpus_per_trial: float | None) -> Cluster:
    """The cluster Ray is connected to, after checking that one trial fits on some node."""
    cluster = Cluster(cluster_nodes(), ray_internals.launchable_nodes())
    check_resources_fit(cpus_per_trial, gpus_per_trial, cluster.nodes + cluster.launchable)
    return cluster


def announce(cluster: Cluster, dashboard: str | None, address: str | None, storage: str | None,
             echo: Callable[[str], None], no_dashboard: str | None = None, gpus_per_trial: float | None = None,
             gpus_here: int | None = None) -> None:
    """The dashboard line and the warnings about this cluster, before the search starts.
    `gpus_here`: the GPUs torch sees on this machine (default: asked now)."""
    token_auth = ray_internals.auth_mode() == "token"
    if dashboard:
        echo(f"Ray dashboard: {dashboard}" + ("   (token: `ray get-auth-token`)" if token_auth else ""))
    if no_dashboard:
        echo(f"Warning: Ray's dashboard could not start ({no_dashboard}); the search goes on without it")
    gpus_here = devices.count() if gpus_here is None else gpus_here
    if gpus_here and not cluster.has_gpus and gpus_per_trial != 0:
        ray_of = "the Ray cluster" if address else "the local Ray"
        echo(f"Warning: torch sees {gpus_here} GPU(s) on this machine but {ray_of} has none, so every trial "
             f"trains on a CPU; give Ray the GPUs (CUDA_VISIBLE_DEVICES, `ray start --num-gpus`), or "
             f"--gpus-per-trial 0 to train on CPUs on purpose")
    if not token_auth and not address:
        echo("Warning: RAY_AUTH_MODE=disabled: the dashboard and Ray's ports accept anyone who can reach them")
    if storage is None and cluster.multi_node:
        more = " (and the nodes its autoscaler may launch)" if cluster.launchable else ""
        echo(f"Warning: a cluster of {len(cluster.nodes)} node(s){more} and no --storage: trials on other nodes "
             f"keep their checkpoints on their own disks, where resuming and the test evaluation cannot find them; "
             f"give --storage s3://bucket/path or a folder every node shares (docs/cluster.md)")
