"""The cluster path a user takes, on this machine: `ray up -y cluster/local.yaml`, searches
with `--address auto` whose trials make the autoscaler launch GPU workers, a worker lost
mid-search and replaced, idle workers stopped, `ray down -y`, and nothing left behind: one
cluster's whole life in one test (a `ray up` and its workers take half a minute of both cores).

The nodes are processes here (tunefm/tune/one_machine.py), set up by the YAML's own setup
and start commands; their GPUs are logical, so trials train on the CPU and say so. Ray
processes this test did not start (the test session's own Ray, another cluster) are left
alone: the cluster's processes are found by its token, never by name.
"""

from __future__ import annotations

import contextlib
import time

import psutil
import pytest
from conftest import own_processes
from test_failures import checkpointed_epoch
from test_resume import restored_from_checkpoint
from up_cluster import UpCluster

from tunefm.run import store

ON_THE_CLUSTER = ["--space", "fourfam", "--val-size", "500", "--test-size", "500", "--address", "auto"]
SMALL = [*ON_THE_CLUSTER, "--set", "model=iaro1", "--train-size", "2000"]


def session_ray_daemons() -> dict[int, float]:
    """pid -> start time of the test session's own Ray daemons: Ray processes the cluster's
    `ray stop` and `ray down` must not touch."""
    found = {}
    for pid in own_processes():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.name() in ("raylet", "gcs_server"):
                found[pid] = process.create_time()
    return found


def assert_nothing_left(cluster: UpCluster) -> None:
    assert not cluster.left(), f"processes of the cluster left behind: {sorted(cluster.left())}"
    assert not cluster.state_file.exists()  # the provider's record of the nodes
    assert not (cluster.home / "ray_bootstrap_config.yaml").exists()  # what `ray up` copied to the head
    assert not (cluster.temp_dir / "ray" / "ray_current_cluster").exists()  # no dead address for `auto`


@pytest.mark.slow
def test_ray_up_launches_workers_replaces_a_lost_one_stops_them_when_idle_and_ray_down_leaves_nothing(
        ray_session, tmp_path, data_dir):
    """One cluster's whole life, as a user's: `ray up`; a solo and a fused search whose trials make
    the autoscaler launch GPU workers; a third search that loses a worker mid-trial (every
    process of it SIGKILLed: the machine dies), whose trials continue from their checkpoints
    while the autoscaler replaces the node; the idle workers stopped; `ray down`."""
    others = session_ray_daemons()
    assert len(others) == 2  # the session's gcs_server and raylet
    with UpCluster(tmp_path) as cluster:
        up = cluster.up()
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "Node type gpu_worker: CPU 2, GPU 1; 0 to 2 node(s)" in up.stdout + up.stderr
        assert [n["type"] for n in cluster.ray_nodes()] == ["head"] and not cluster.workers()

        # 8 trials of iaro1 (1 CPU, 0.25 GPU each) and a head with no CPU: only workers can hold them.
        results = ["--results", str(tmp_path / "results"), "--data-dir", str(data_dir)]
        solo = cluster.tunefm("search", *SMALL, *results, "--set", "lr=0.01,0.005", "--set",
                              "batch_size=16,32,64,128", "--max-epochs", "2", "--fuse", "off", "--name", "solo",
                              "--test-top", "1")
        assert solo.returncode == 0, solo.stdout[-3000:] + solo.stderr[-3000:]
        nodes = cluster.ray_nodes()
        workers = cluster.workers()
        fused = cluster.tunefm("search", *SMALL, *results, "--set", "lr=0.01,0.005", "--set", "batch_size=32,64",
                               "--max-epochs", "2", "--fuse", "on", "--name", "fused", "--test-top", "0")
        assert fused.returncode == 0, fused.stdout[-3000:] + fused.stderr[-3000:]
        nodes += cluster.ray_nodes()
        workers.update(cluster.workers())
        launched_for_the_first_two = dict(workers)

        lost = lose_a_worker_mid_search(cluster, tmp_path, data_dir)
        workers.update(lost.workers_after)

        # Idle workers go after idle_timeout_minutes (0.5): the autoscaler terminates them through the provider.
        deadline = time.monotonic() + 150
        while cluster.workers() and time.monotonic() < deadline:
            time.sleep(2)
        scaled_down = not cluster.workers()
        worker_processes_left = [p.pid for i in workers for p in cluster.node_processes(i)]

        down = cluster.down()
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
        assert_nothing_left(cluster)
    assert session_ray_daemons() == others  # the Ray that is not this cluster's still runs

    # The autoscaler launched the workers (the test started none): each carries its launch request.
    assert 1 <= len(launched_for_the_first_two) <= 2
    assert all("ray-launch-request" in n["tags"] for n in workers.values())
    assert all(n["tags"]["ray-user-node-type"] == "gpu_worker" for n in workers.values())
    on_workers = {n["node_id"] for n in nodes if n["type"] == "gpu_worker" and n["instance_id"] in workers}
    for name in ("solo", "fused"):
        trials = store.read_trials(tmp_path / "results" / name)
        assert set(trials.status) == {"TERMINATED"} and (trials.epochs >= 1).all()
        assert set(trials.node_id) <= on_workers, name  # every trial trained on a launched worker
        # The workers' GPU is logical: Ray schedules it, the trials train on the CPU and say so.
        assert (trials.device == "cpu").all() and set(trials.gpu_ids) == {"0"}
    assert len(store.read_trials(tmp_path / "results" / "solo")) == 8
    assert store.read_trials(tmp_path / "results" / "solo").test_acc.notna().sum() == 1
    fused_trials = store.read_trials(tmp_path / "results" / "fused")
    assert len(fused_trials) == 4 and fused_trials.fused_group.notna().all()
    assert sum("CUDA is not available" in line for line in solo.stdout.splitlines()) == 1  # warned once

    lost.check()
    assert scaled_down and not worker_processes_left  # stopped by the autoscaler, processes and all


class LostWorker:
    """What `lose_a_worker_mid_search` saw: the search's run folder and output, the trial and node
    lost, the workers the autoscaler launched after the loss and those it held at the end."""

    def __init__(self, **facts):
        self.__dict__.update(facts)

    def check(self) -> None:
        """The autoscaler terminated the dead node and launched a replacement, set up by the YAML's
        commands; the lost trial continued from its checkpoint on another node; every epoch once."""
        assert self.lost_instance not in self.workers_after  # terminated through the provider
        assert self.replacements, "the autoscaler launched no node after the loss"
        for instance in self.replacements:  # a new gpu_worker, Ray running there
            assert self.workers_after[instance]["tags"]["ray-user-node-type"] == "gpu_worker"
            assert self.workers_after[instance]["tags"]["ray-node-status"] == "up-to-date"
        trials, epochs = store.read_trials(self.run_dir).set_index("trial_id"), store.read_epochs(self.run_dir)
        assert len(trials) == 8 and set(trials.status) == {"TERMINATED"} and (trials.epochs == 6).all()
        assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 48  # each epoch once
        assert trials.retries[self.lost_trial] >= 1 and trials.node_id[self.lost_trial] != self.lost_node
        assert restored_from_checkpoint(self.tune_dir, self.lost_trial)
        assert f"Warning: trial {self.lost_trial} (iaro2 " in self.out


def lose_a_worker_mid_search(cluster: UpCluster, tmp_path, data_dir) -> LostWorker:
    """Eight trials of 6 epochs, four at a time on two workers (2 CPUs each), so that trials still
    wait when one worker's processes are all SIGKILLed, while a trial on it has 1 to 4 epochs
    checkpointed (trials.parquet lags a flush, a few epochs: two to spare). The autoscaler sees
    the node die, terminates it through the provider and launches a replacement for the waiting
    trials; the lost trials continue from their checkpoints."""
    results, shared = tmp_path / "results", tmp_path / "shared"
    process = cluster.start_tunefm(
        "search", *ON_THE_CLUSTER, "--set", "model=iaro2", "--set", "lr=0.01,0.005", "--set",
        "batch_size=8,16,32,64", "--max-epochs", "6", "--no-early-stop", "--train-size", "4000", "--test-top", "0",
        "--fuse", "off",
        "--storage", str(shared), "--data-dir", str(data_dir), "--results", str(results), "--name", "lost")
    run_dir, tune_dir = results / "lost", shared / "lost" / store.TUNE_DIR
    deadline, victim = time.monotonic() + 240, None
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        cluster.observe()
        if store.has_results(run_dir) and len(cluster.workers()) == 2:
            trials = store.read_trials(run_dir)
            running = trials[(trials.status == "RUNNING") & trials.node_id.notna()]  # its facts written
            for trial_id, node_id in zip(running.trial_id, running.node_id):
                if 1 <= checkpointed_epoch(tune_dir / trial_id) <= 4:
                    victim = trial_id, node_id
                    break
        time.sleep(0.3)
    assert victim is not None, process.communicate()
    lost_trial, lost_node = victim
    nodes = cluster.ray_nodes()
    lost_instance = next((n["instance_id"] for n in nodes if n["node_id"] == lost_node), None)
    assert lost_instance, (lost_node, nodes, cluster.state())
    before = set(cluster.workers())
    for p in cluster.node_processes(lost_instance):  # the machine dies: every process at once
        p.kill()

    replacements: set[str] = set()
    while process.poll() is None:
        cluster.observe()
        replacements |= set(cluster.workers()) - before
        time.sleep(0.5)
    out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return LostWorker(run_dir=run_dir, tune_dir=tune_dir, out=out, lost_trial=lost_trial, lost_node=lost_node,
                      lost_instance=lost_instance, replacements=replacements, workers_after=cluster.workers())
