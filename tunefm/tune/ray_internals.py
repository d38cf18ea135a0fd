"""Every use of Ray's and Ray Tune's private attributes, modules and formats, in one place.

Each function says why the public API does not suffice. They were written against the
Ray versions in `TESTED_RAY` (pyproject.toml's bound, cluster/constraints.txt's pin);
`check_resume_supported` refuses a resume on any other, since resume is where a changed
internal would break silently (a trial restarted from scratch, a callback lost).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray import tune

from tunefm.errors import UserError

TESTED_RAY = ("2.60",)  # major.minor versions the test suite has passed on


def ray_version() -> str:
    return ray.__version__


def check_resume_supported() -> None:
    """Refuse to resume on a Ray whose Tune internals were not tested (see `restore_tuner`)."""
    version = ray_version()
    if ".".join(version.split(".")[:2]) not in TESTED_RAY:
        raise UserError(f"resuming needs Ray {' or '.join(v + '.x' for v in TESTED_RAY)}: it restores Tune's saved "
                        f"state through Tune internals, and this is Ray {version}; install the tested version "
                        f"(pip install -c cluster/constraints.txt 'ray[tune]') to resume, or start a new search")


def quiet_auth_notice() -> None:
    """Drop Ray's "token authentication is enabled" notice: tunefm prints its own dashboard
    line. Ray logs it from a private module, under that module's name."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def dashboard_dependency_error() -> str | None:
    """Why Ray's dashboard cannot start in this Python (a dependency missing or too old), or None.
    Ray asks the same private function before it starts the dashboard."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return None if error is None else (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def quiet_dashboard_failure():
    """Ray logs a dashboard that did not come up as a multi-line error from a private module;
    tunefm says it in one line (`cluster.announce`)."""
    services = logging.getLogger("ray._private.services")
    level = services.level
    services.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        services.setLevel(level)


WORKER_STARTS_PER_CPU = 16  # a fused search's member trials per CPU slot, with room to spare


def quiet_worker_pool_warning(cpus: int) -> None:
    """For a Ray started here: the raylet warns ("N PYTHON worker processes have been started
    ... 4x the maximum expected startup concurrency") each time the workers it has started
    reach a multiple of its startup concurrency, which is the CPU count. A fused search means
    many light trial processes per CPU (fractional CPUs), so that warning is its normal state.
    The raylet reads the limit only from the RAY_worker_maximum_startup_concurrency variable
    (no public option); a user's own setting is kept. It also lets more workers boot at once."""
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(1, cpus) * WORKER_STARTS_PER_CPU))


def auth_mode() -> str:
    """'token' or 'disabled' for this process. Ray has no public getter for the mode it settled on
    (RAY_AUTH_MODE may be unset, and then Ray decides)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode

        return "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"
    except ImportError:  # a Ray without token authentication
        return "disabled"


def launchable_nodes() -> list[dict[str, float]]:
    """Resources of each node type the cluster's autoscaler may still launch (none without one),
    from GCS's cluster config (KubeRay's, or `publish_node_types`'s for a `ray up` cluster).
    Ray reads it only through its private GCS state client; anything unexpected there means
    "no autoscaler"."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]
    except Exception:
        return []


def publish_node_types(address: str, node_types: list[tuple[str, dict[str, float], int, int]]) -> None:
    """Record (name, resources, min_count, max_count) of each node type in GCS's cluster config,
    the record `launchable_nodes` reads. KubeRay fills it; a `ray up` autoscaler does not (Ray
    2.60), so the cluster YAMLs' head start commands call this. Ray writes it only through its
    private GCS client; resources there are whole numbers (fractional ones round down)."""
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    config = autoscaler_pb2.ClusterConfig()
    for name, resources, min_count, max_count in node_types:
        group = config.node_group_configs.add(name=name, min_count=min_count, max_count=max_count)
        group.resources.update({key: int(value) for key, value in resources.items()})
    GcsClient(address=address).report_cluster_config(config.SerializeToString())


def forget_stopped_head(gcs_port: int) -> None:
    """Remove this machine's record of the last `ray start --head` (ray_current_cluster) when it
    names the head on `gcs_port`, just stopped; `ray stop` does the same. Left behind, it would
    send every driver that joins "auto" to a dead address. Its place is Ray's private knowledge."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    with contextlib.suppress(OSError):
        if path.read_text().strip().rpartition(":")[2] == str(gcs_port):
            path.unlink()


def auto_address() -> str | None:
    """The cluster `--address auto` means: RAY_ADDRESS, else the address the last `ray start`
    on this machine recorded, else a running Ray found among this machine's processes (None:
    none of these). Resolved here so that a recorded cluster that has died is one error in
    seconds, not minutes of Ray retrying; and the record comes first, where Ray itself would
    take any other Ray it finds running over a dead record. Ray exposes these lookups only
    in a private module."""
    from ray._private import services

    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        recorded = services.find_bootstrap_address(None)
        if recorded:
            return recorded
        running = services.find_gcs_addresses()
        return next(iter(running)) if running else None
    except Exception:
        return None


def restore_tuner(tune_dir: str, trainable, callbacks: list, scheduler, max_failures: int):
    """`Tuner.restore` with this process's callbacks, scheduler and retry limit.

    Tune brings back the RunConfig and TuneConfig pickled when the run began, callbacks
    and scheduler included (they would write to the old process's writer); its public
    `restore` takes no replacements, so they are set on the restored Tuner's internals.
    """

    tuner = tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True, resume_errored=True)
    internal = tuner._local_tuner
    run_config = internal.get_run_config()
    run_config.callbacks = callbacks
    run_config.failure_config = tune.FailureConfig(max_failures=max_failures)
    internal._tune_config.scheduler = scheduler
    return tuner


def latest_checkpoints_in_state(state_text: str, unfinished_only: bool = False) -> list[str]:
    """The checkpoint path Tune's saved experiment state (`experiment_state-*.json`) names as
    each trial's latest (only of trials not TERMINATED there, with `unfinished_only`). The
    state is Tune's private format: per trial, its attributes as JSON and the checkpoint
    manager pickled with cloudpickle; no public API reads it without restoring the run."""
    state: dict[str, Any] = json.loads(state_text)
    named = []
    for trial_state, runtime in state.get("trial_data", []):
        if unfinished_only:
            attributes = json.loads(trial_state) if isinstance(trial_state, str) else trial_state
            if attributes.get("status") == "TERMINATED":
                continue
        runtime = json.loads(runtime) if isinstance(runtime, str) else runtime
        manager = runtime.get("checkpoint_manager") or {}
        if manager.get("_type") != "CLOUDPICKLE_FALLBACK":
            continue
        latest = getattr(pickle.loads(bytes.fromhex(manager["value"])), "_latest_checkpoint_result", None)
        if latest is not None and latest.checkpoint is not None:
            named.append(latest.checkpoint.path)
    return named


def saved_tune_state(tune_dir: str) -> bool:
    """Tune has saved the experiment's state (`experiment_state-<time>.json`) in `tune_dir`."""
    try:
        fs, path = pafs.FileSystem.from_uri(tune_dir)
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (OSError, pa.ArrowException):
        return False
    return any(Path(f.path).name.startswith("experiment_state") and f.path.endswith(".json") for f in found)


def latest_state_file(tune_dir: str) -> tuple[pafs.FileSystem, str] | None:
    """(filesystem, path) of the newest `experiment_state-<time>.json` in `tune_dir`."""
    fs, path = pafs.FileSystem.from_uri(tune_dir)
    found = [f.path for f in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
             if Path(f.path).name.startswith("experiment_state") and f.path.endswith(".json")]
    return (fs, max(found)) if found else None  # the name carries the time


def named_checkpoints(tune_dir: str, unfinished_only: bool = False) -> list[str]:
    """The checkpoint Tune's saved experiment state names as each trial's latest (trials that
    have one; only those it does not hold finished, with `unfinished_only`), whether or not
    it still exists."""
    located = latest_state_file(tune_dir)
    if located is None:
        return []
    fs, state_path = located
    with fs.open_input_stream(state_path) as f:
        return latest_checkpoints_in_state(f.read().decode(), unfinished_only)
