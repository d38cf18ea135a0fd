"""Clusters: the `ray up` config, a real two-node Ray on this machine, logical-GPU packing,
and the dashboard's token authentication.

The Ray clusters here are separate `ray start` processes (tests/local_cluster.py) and
tunefm runs against them as a subprocess, the way a user runs it with `--address`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml
from local_cluster import LocalCluster, free_port, fresh_ray_env, run_tunefm

from tunefm.errors import UserError
from tunefm.run import store
from tunefm.tune import cluster, ray_internals

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "cluster" / "config.yaml"
CONSTRAINTS = REPO / "cluster" / "constraints.txt"
LOCAL = REPO / "cluster" / "local.yaml"


def load_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_cluster_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load_config())  # fills Ray's AWS defaults, as `ray up` does
    validate_config(config)  # Ray's JSON schema; raises on any unknown or malformed key
    assert config["provider"]["type"] == "aws"

    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head schedules no trials
    gpu_workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert gpu_workers and all(n["node_config"]["InstanceType"].startswith(("g", "p")) for n in gpu_workers)
    assert all(n["max_workers"] >= 1 for n in gpu_workers)


def test_cluster_config_installs_tunefm_and_turns_token_auth_on():
    config = load_config()
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "-c ~/tunefm/cluster/constraints.txt" in setup and "-e ~/tunefm" in setup
    assert config["file_mounts"]["~/tunefm"] == "."
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token, on every node
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[commands] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), commands
    assert "export RAY_AUTH_MODE=token" in setup  # for drivers started on the nodes (ray exec, ray job)


def test_local_config_is_the_aws_cluster_on_one_machine():
    """cluster/local.yaml: config.yaml's node types, resources and start commands, on tunefm's
    one-machine provider, and valid for Ray as `ray up` prepares it."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    aws, local = load_config(), yaml.safe_load(LOCAL.read_text())
    validate_config(prepare_config(yaml.safe_load(LOCAL.read_text())))
    assert local["provider"] == {"type": "external", "module": "tunefm.tune.one_machine.OneMachineNodeProvider"}
    assert local["head_node_type"] == aws["head_node_type"]
    assert local["available_node_types"].keys() == aws["available_node_types"].keys()
    for name, node in local["available_node_types"].items():
        theirs = aws["available_node_types"][name]
        assert node["resources"].keys() == theirs["resources"].keys(), name  # a GPU worker has a (logical) GPU
        assert node["resources"].get("GPU") == theirs["resources"].get("GPU")
        assert node.get("min_workers", 0) == theirs.get("min_workers", 0)
    assert local["available_node_types"]["head"]["resources"] == {"CPU": 0}

    def one_machine(command: str) -> str:  # every node here shares the machine's ports
        return command.replace(" --object-manager-port=8076", "")

    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert local[commands] == [one_machine(c) for c in aws[commands]], commands
    assert cluster.autoscaler_node_types(aws) == [("gpu_worker", {"CPU": 8, "GPU": 1}, 0, 4)]
    assert cluster.autoscaler_node_types(local) == [("gpu_worker", {"CPU": 2, "GPU": 1}, 0, 2)]


def test_published_node_types_are_what_a_search_counts_as_launchable(ray_session):
    """`tunefm publish-node-types` (the YAMLs' last head start command) records the worker types
    in the cluster's GCS, where `connect` finds them: Ray's autoscaler does not publish them."""
    address = ray.get_runtime_context().gcs_address
    assert ray_internals.launchable_nodes() == []
    try:
        published = cluster.publish_node_types(str(LOCAL), address)
        assert published == [("gpu_worker", {"CPU": 2, "GPU": 1}, 0, 2)]
        assert ray_internals.launchable_nodes() == [{"CPU": 2.0, "GPU": 1.0}]
        live = cluster.connect(cpus_per_trial=2, gpus_per_trial=0.25)
        assert live.has_gpus and live.multi_node  # a GPU worker not yet running counts
    finally:
        ray_internals.publish_node_types(address, [])  # the session's Ray has no autoscaler again
    assert ray_internals.launchable_nodes() == []


def test_constraints_pin_every_dependency():
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines()
                if line.strip() and not line.startswith("#"))
    assert {"ray", "torch", "torchvision", "hyperopt", "pandas", "pyarrow", "tensorboardX", "click",
            "matplotlib"} <= set(pins)
    assert all(re.fullmatch(r"\d+(\.\d+)+", v) for v in pins.values()), pins


@pytest.mark.parametrize("path", [CONFIG, LOCAL], ids=["config.yaml", "local.yaml"])
def test_every_key_of_the_cluster_config_is_commented(path):
    lines = path.read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if re.match(r"\s*(- )?[A-Za-z_~.][\w.~/-]*:", line) and "#" not in line:
            previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
            if not previous.strip().startswith("#"):
                uncommented.append(line.strip())
    assert not uncommented


QUICK = ["--space", "fourfam", "--set", "model=iaro1", "--set", "lr=0.01", "--train-size", "2000",
         "--val-size", "500", "--test-size", "500"]


@pytest.mark.slow
def test_a_study_runs_on_a_worker_node_and_leaves_no_ray_process(tmp_path, data_dir):
    """A head that schedules no trials (CPU 0, as config.yaml's) and a worker node: every trial
    trains on the worker, away from the driver, and its results, checkpoints and test
    evaluation come back. (With a slot on the head too, Tune may hand the worker's trials to
    the head's free actor while the worker's starts, as its actor reuse does: a loaded
    machine's worker would then train nothing.)"""
    cluster = LocalCluster(tmp_path)
    try:
        address = cluster.start_head(cpus=0)
        cluster.add_node(cpus=2)
        cluster.wait_for_nodes(2)
        head, (worker,) = cluster.node_ids()
        done = cluster.tunefm("search", *QUICK, "--set", "batch_size=64,128,256,512", "--max-epochs", "2",
                              "--address", address, "--results", str(tmp_path / "results"), "--name", "two",
                              "--data-dir", str(data_dir), "--test-top", "1")
    finally:
        left = cluster.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not left, f"Ray processes left behind: {sorted(left)}"
    assert "Warning: a cluster of 2 node(s) and no --storage" in done.stdout

    run_dir = tmp_path / "results" / "two"
    trials = store.read_trials(run_dir)
    assert len(trials) == 4 and set(trials.status) == {"TERMINATED"} and (trials.epochs >= 1).all()
    assert set(trials.node_id) == {worker} != {head}  # trained on the worker node
    assert store.read_json(run_dir / store.RUN_FILE)["nodes"] == 2
    assert trials.test_acc.notna().sum() == 1  # the head and the worker share this disk, so the checkpoint is found


@pytest.mark.slow
def test_logical_gpu_packs_four_trials_and_falls_back_to_cpu(tmp_path, data_dir):
    cluster = LocalCluster(tmp_path)
    try:
        address = cluster.start_head(cpus=4, gpus=1)  # one logical GPU: Ray schedules it, CUDA has none
        common = [*QUICK, "--address", address, "--results", str(tmp_path / "results"), "--data-dir",
                  str(data_dir), "--test-top", "0", "--no-early-stop"]
        # iaro1's own GPU fraction is 0.25: four trials fit on the one GPU at once
        packed = cluster.tunefm("search", *common, "--set", "batch_size=16,32,64,128", "--max-epochs", "3",
                                "--train-size", "6000", "--name", "packed")
        too_big = cluster.tunefm("search", *common, "--gpus-per-trial", "2", "--name", "too-big")
    finally:
        left = cluster.stop()
    assert not left, f"Ray processes left behind: {sorted(left)}"
    assert packed.returncode == 0, packed.stdout[-3000:] + packed.stderr[-3000:]

    trials = store.read_trials(tmp_path / "results" / "packed")
    assert len(trials) == 4 and (trials.gpu_fraction == 0.25).all()
    assert set(trials.gpu_ids) == {"0"}  # the same GPU id for all four
    ends = trials.started_at + trials.total_time_s
    assert trials.started_at.max() < ends.min()  # all four were training at one moment
    assert (trials.device == "cpu").all()  # no CUDA behind the logical GPU: the CPU fallback ...
    warnings = [line for line in packed.stdout.splitlines() if "CUDA is not available" in line]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: Ray gave trial")  # ... warned once

    assert too_big.returncode == 1
    assert too_big.stderr == "Error: --gpus-per-trial 2 can never be met: the largest node has 1 GPU\n"
    assert not (tmp_path / "results" / "too-big").exists()


def test_gpu_share_is_the_models_own_unless_given():
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    def bundle(gpus_per_trial, has_gpus, model):
        factory = cluster.trial_resources(1.0, gpus_per_trial, has_gpus)({"model": model})
        assert isinstance(factory, PlacementGroupFactory)
        return factory.bundles[0]

    assert bundle(None, True, "iaro1") == {"CPU": 1.0, "GPU": 0.25}  # the model's default fraction
    assert bundle(None, True, "iaro4") == {"CPU": 1.0, "GPU": 0.5}
    assert bundle(1.0, True, "iaro1") == {"CPU": 1.0, "GPU": 1.0}  # --gpus-per-trial wins
    assert bundle(None, False, "iaro1") == {"CPU": 1.0}  # a cluster without GPUs: CPU only
    assert bundle(0, True, "iaro1") == {"CPU": 1.0}  # --gpus-per-trial 0: CPU only


def test_resources_count_the_nodes_an_autoscaler_may_start(ray_session, monkeypatch):
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    assert ray_internals.launchable_nodes() == []  # the test session's Ray has no autoscaler

    # What a `ray up` cluster's autoscaler publishes: its node types and how many of each it may start.
    config = autoscaler_pb2.ClusterConfig()
    for resources, max_count in [({"CPU": 8, "GPU": 1}, 4), ({"CPU": 64, "GPU": 8}, 0)]:
        group = config.node_group_configs.add(max_count=max_count)
        group.resources.update(resources)
    monkeypatch.setattr(state, "get_cluster_config", lambda: config)
    to_come = ray_internals.launchable_nodes()
    assert to_come == [{"CPU": 8, "GPU": 1}]  # a type it may not start (max 0) does not count

    live = [{"CPU": 2.0}]
    cluster.check_resources_fit(1, 0.5, live + to_come)  # a GPU worker not yet running is enough
    with pytest.raises(UserError, match="--gpus-per-trial 2 can never be met: the largest node has 1 GPU"):
        cluster.check_resources_fit(1, 2, live + to_come)


DASHBOARD_PROBE = """
import json, os, urllib.error, urllib.request
from tunefm.tune import cluster
started, url, _ = cluster.start_ray(None)  # what `tunefm search` does without --address
token = open(os.path.expanduser("~/.ray/auth_token")).read().strip()
def status(headers):
    try:
        return urllib.request.urlopen(urllib.request.Request(url + "/api/version", headers=headers), timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps({"url": url, "no_token": status({}), "wrong_token": status({"Authorization": "Bearer x"}),
                  "token": status({"Authorization": f"Bearer {token}"})}))
import ray; ray.shutdown()
"""


@pytest.mark.slow
def test_local_dashboard_is_on_loopback_and_needs_the_token(tmp_path):
    env = fresh_ray_env(tmp_path)  # the token is made for this run
    done = subprocess.run([sys.executable, "-c", DASHBOARD_PROBE], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["url"].startswith("http://127.0.0.1:")
    assert (probe["no_token"], probe["wrong_token"], probe["token"]) == (401, 403, 200)
    assert (tmp_path / ".ray" / "auth_token").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("auth_mode", [None, "disabled"])
def test_a_local_search_prints_the_dashboard_and_warns_when_auth_is_off(tmp_path, data_dir, auth_mode):
    env = fresh_ray_env(tmp_path)
    if auth_mode:
        env["RAY_AUTH_MODE"] = auth_mode
    done = run_tunefm(env, "search", *QUICK, "--set", "batch_size=256", "--max-epochs", "1", "--test-top", "0",
                      "--results", str(tmp_path / "results"), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    dashboard = [line for line in lines if line.startswith("Ray dashboard: http://127.0.0.1:")]
    warning = "Warning: RAY_AUTH_MODE=disabled: the dashboard and Ray's ports accept anyone who can reach them"
    if auth_mode is None:  # Ray's local default: token authentication on
        assert len(dashboard) == 1 and dashboard[0].endswith("(token: `ray get-auth-token`)")
        assert warning not in lines
    else:
        assert len(dashboard) == 1 and "token" not in dashboard[0]
        assert warning in lines


@pytest.mark.slow
def test_a_search_goes_on_without_a_dashboard_that_cannot_start(tmp_path, data_dir):
    """A dashboard dependency missing makes Ray raise a bare Exception when asked for a
    dashboard: one warning line, and the search runs on a Ray started without it."""
    broken = tmp_path / "broken"
    (broken / "aiohttp_cors").mkdir(parents=True)
    (broken / "aiohttp_cors" / "__init__.py").write_text(  # as if it were not installed
        'raise ModuleNotFoundError("No module named \'aiohttp_cors\'", name="aiohttp_cors")\n')
    env = fresh_ray_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(broken), *filter(None, [env.get("PYTHONPATH")])])
    done = run_tunefm(env, "search", *QUICK, "--set", "batch_size=256", "--max-epochs", "1", "--test-top", "0",
                      "--results", str(tmp_path / "results"), "--data-dir", str(data_dir), "--name", "run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line for line in lines if "dashboard" in line.lower()] == [
        "Warning: Ray's dashboard could not start (No module named 'aiohttp_cors'); "
        "the search goes on without it"]
    assert "Traceback" not in done.stderr
    loaded = store.load_run(tmp_path / "results" / "run")
    assert (loaded.trials.status == "TERMINATED").all() and loaded.info["dashboard_url"] is None


def test_a_gpu_torch_sees_and_ray_does_not_is_one_warning_line():
    lines = []
    no_gpu = cluster.Cluster(nodes=[{"CPU": 16.0}], launchable=[])
    cluster.announce(no_gpu, None, None, None, lines.append, gpus_here=1)
    assert [line for line in lines if "GPU" in line] == ["Warning: torch sees 1 GPU(s) on this machine but the local Ray has none, so every trial "
                     "trains on a CPU; give Ray the GPUs (CUDA_VISIBLE_DEVICES, `ray start --num-gpus`), or "
                     "--gpus-per-trial 0 to train on CPUs on purpose"]
    quiet = []
    cluster.announce(no_gpu, None, None, None, quiet.append, gpus_per_trial=0, gpus_here=1)  # CPUs asked for
    cluster.announce(cluster.Cluster(nodes=[{"CPU": 16.0, "GPU": 1.0}], launchable=[]), None, None, None,
                     quiet.append, gpus_here=1)
    cluster.announce(no_gpu, None, None, None, quiet.append, gpus_here=0)
    assert not [line for line in quiet if "GPU" in line]


@pytest.mark.slow
def test_without_address_a_search_starts_its_own_ray_whatever_the_machine_holds(tmp_path, data_dir):
    """A running `ray start` cluster (recorded in ray_current_cluster), RAY_ADDRESS naming it,
    and the record a killed one leaves behind: a bare ray.init() joins the first two and
    hangs on the third; `tunefm search` without --address starts its own local Ray each
    time. With --address auto, the dead record is one Error line in seconds."""
    results = tmp_path / "results"

    def search(cluster_env: dict, name: str, *extra: str, **env: str):
        return run_tunefm({**cluster_env, **env}, "search", *QUICK, "--set", "batch_size=512", "--max-epochs", "1",
                          "--test-top", "0", "--train-size", "600", "--val-size", "200", "--name", name,
                          "--results", str(results), "--data-dir", str(data_dir), *extra, timeout=240)

    with LocalCluster(tmp_path) as ray_cluster:
        address = ray_cluster.start_head(cpus=1)
        recorded = Path(ray_cluster.temp_dir) / "ray" / "ray_current_cluster"
        for _ in range(300):  # `ray start` records its address once its node is up
            if recorded.exists() and recorded.read_text().strip():
                break
            time.sleep(0.1)
        assert recorded.read_text().strip().endswith(address.split(":")[1])  # what a bare ray.init() would join
        for name, env in [("running", {}), ("env", {"RAY_ADDRESS": address})]:
            done = search(ray_cluster.env, name, **env)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            own = store.read_run_info(results / name)["ray_address"]
            assert own and own.split(":")[1] != address.split(":")[1]  # its own Ray, not the cluster
            assert store.read_trials(results / name).status.tolist() == ["TERMINATED"]
        ray_cluster.kill_node(0)  # a machine that went down: the record stays
        assert recorded.exists()
        auto = search(ray_cluster.env, "auto", "--address", "auto")
        assert auto.returncode == 1 and auto.stderr.count("\n") == 1, auto.stderr[-2000:]
        assert auto.stderr.startswith("Error: no Ray cluster answers at --address auto (--address auto found ")
        done = search(ray_cluster.env, "dead")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert store.read_run_info(results / "dead")["status"] == "completed"
        assert not (results / "auto").exists()


def test_the_declared_ray_range_the_cluster_pin_and_the_tested_versions_agree():
    """pyproject.toml's bound, cluster/constraints.txt's pin and ray_internals.TESTED_RAY
    (which --resume checks) name the same Ray; this test session runs on it."""
    import ray
    import tomllib
    from packaging.requirements import Requirement

    root = Path(__file__).parent.parent
    declared = next(Requirement(d) for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]
                    ["dependencies"] if d.startswith("ray["))
    pinned = next(line.split("==")[1].strip() for line in (root / "cluster" / "constraints.txt").read_text().splitlines()
                  if line.startswith("ray=="))
    assert declared.specifier.contains(pinned) and declared.specifier.contains(ray.__version__)
    assert any(str(b).startswith("<") for b in declared.specifier), "no upper bound"
    assert ".".join(pinned.split(".")[:2]) in ray_internals.TESTED_RAY
    for untested in ("2.59.0", "2.61.0"):
        assert not declared.specifier.contains(untested)


@pytest.mark.slow
def test_the_test_sessions_ray_is_its_own_whatever_the_machine_holds(tmp_path):
    """The record a dead `ray start` leaves behind (ray_current_cluster naming an address where
    nothing answers): a bare ray.init(num_cpus=2) would take it for a cluster to join and
    refuse; the session fixture's start_session_ray starts its own local Ray and runs a task
    on it, with RAY_ADDRESS naming the dead one too."""
    dead = f"127.0.0.1:{free_port()}"
    temp = Path(tempfile.mkdtemp(prefix="tfm-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text(dead)
        env = {**fresh_ray_env(tmp_path), "RAY_TMPDIR": str(temp)}

        def python(code: str, **extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                                  text=True, timeout=180, cwd=Path(__file__).parent)

        bare = python("import ray; ray.init(num_cpus=2, num_gpus=0, include_dashboard=False)")
        assert bare.returncode != 0
        assert "When connecting to an existing cluster, num_cpus and num_gpus must not be provided" in bare.stderr
        ours = python("from conftest import start_session_ray\n"
                      "ray = start_session_ray()\n"
                      "print(ray.get(ray.remote(lambda: 6 * 7).remote()), ray.get_runtime_context().gcs_address)\n"
                      "ray.shutdown()\n", RAY_ADDRESS=dead)
        assert ours.returncode == 0, ours.stderr[-2000:]
        answer, address = ours.stdout.strip().splitlines()[-1].split()
        assert answer == "42" and address != dead
    finally:
        shutil.rmtree(temp, ignore_errors=True)
