"""The coordinator of a fused search: a Ray actor that starts the executors and tells each
member trial which one trains it. Its process imports neither torch nor Tune (it starts
while the trials' own processes start, on the same cores), and neither does the shell of
an executor actor until the executor itself is built in it.

    coordinator = ray.remote(Coordinator).options(name=...).remote([arrays_ref], run_name, ...)
    coordinator.prestart.remote(slots_needed)      # one executor per CPU slot, before trials ask
    executor = ray.get(coordinator.executor_for.remote(trial_id, config, node_id, gpu_ids))

Placement: one executor per GPU (the GPU Ray gave the trial), or on a CPU node one per CPU
slot; a trial goes to its node's slot with the fewest members (of its shape first where
loads tie), so a study's trials spread over every slot. An executor that died (killed, its
node lost) or broke (its `ping` raises: a sticky CUDA error) is replaced, by a new process,
when a trial it trained asks again after Tune retried it.
"""

from __future__ import annotations

import os
import threading

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tunefm.engine import trial_config


class ExecutorActor:
    """The Ray actor around an `executor.Executor`: torch is imported in its own process, when
    it is built, not in the coordinator that creates it."""

    def __init__(self, *args, **kwargs):
        from tunefm.tune.executor import Executor  # torch: only in the executor's process

        self.executor = Executor(*args, **kwargs)

    def ping(self) -> str:
        return self.executor.ping()

    def join(self, trial_id: str, config: dict, state: bytes | None = None) -> None:
        self.executor.join(trial_id, config, state)

    def next_epoch(self, trial_id: str):
        return self.executor.next_epoch(trial_id)

    def leave(self, trial_id: str) -> bool:
        return self.executor.leave(trial_id)

    def status(self) -> dict:
        return self.executor.status()


class Coordinator:
    """Starts executors where trials land and tells each trial its executor."""

    def __init__(self, arrays_box: list, run_name: str, threads: int, loop: str, fuse: str, capacity: int,
                 max_epochs: int, cpus_per_trial: float, shape_trials: dict | None = None):
        self.shape_trials = shape_trials or {}  # shape key -> a grid's trials of that shape
        self.arrays_ref = arrays_box[0]  # in a list, so Ray passes the reference, not 47 MB of arrays
        self.run_name, self.threads, self.loop, self.fuse = run_name, threads, loop, fuse
        self.capacity, self.max_epochs, self.cpus_per_trial = capacity, max_epochs, cpus_per_trial
        self.executors: dict[tuple, object] = {}  # (node, device, slot) -> actor handle
        self.members: dict[tuple, dict[str, str]] = {}  # executor key -> {trial id: rough shape}
        self.assigned: dict[str, tuple] = {}  # trial id -> executor key
        self.started = 0
        self.lock = threading.Lock()

    def executor_for(self, trial_id: str, config: dict, node_id: str, gpu_ids: list[str]):
        """The executor that trains this trial: its own again after a retry if that one still
        lives, else the place `_choose` picks. A new executor's start is not waited for here:
        the trial's `join` waits in the executor's queue, while other trials are placed."""
        with self.lock:
            key = self.assigned.get(trial_id)
            if key is not None and not self._alive(key):  # a retried trial whose executor died
                self.members.get(key, {}).pop(trial_id, None)
                key = None
            if key is None:
                key = self._choose(node_id, gpu_ids, trial_config.rough_shape(config))
                self.assigned[trial_id] = key
                self.members.setdefault(key, {})[trial_id] = trial_config.rough_shape(config)
            return self.executors[key]

    def prestart(self, slots_needed: int) -> int:
        """Start CPU executors before any trial asks, one per CPU slot of the live nodes up to
        `slots_needed` (a process that imports torch and holds the data: seconds each), so that
        members find theirs waiting; returns how many were started."""
        nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= self.cpus_per_trial]
        started = 0
        with self.lock:
            for slot in range(max(self._cpu_slots(n["NodeID"]) for n in nodes) if nodes else 0):
                for node in nodes:  # round-robin over the nodes
                    key = (node["NodeID"], "cpu", slot)
                    if started < slots_needed and slot < self._cpu_slots(node["NodeID"]) and key not in self.executors:
                        self.executors[key] = self._start(key)
                        started += 1
        return started

    def leave(self, trial_id: str) -> None:
        with self.lock:
            key = self.assigned.pop(trial_id, None)
            if key is not None:
                self.members.get(key, {}).pop(trial_id, None)
                if key in self.executors:
                    self.executors[key].leave.remote(trial_id)

    def status(self) -> dict:
        with self.lock:
            handles = dict(self.executors)
        return {"/".join(map(str, key)): ray.get(handle.status.remote()) for key, handle in handles.items()}

    def shutdown(self) -> None:
        with self.lock:
            for handle in self.executors.values():
                ray.kill(handle, no_restart=True)
            self.executors.clear()

    def _alive(self, key: tuple) -> bool:
        handle = self.executors.get(key)
        if handle is None:
            return False
        try:
            ray.get(handle.ping.remote(), timeout=60)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            del self.executors[key]  # dead, or gone with its node: the next trial here starts another
            return False
        except ray.exceptions.RayTaskError:  # alive but broken (a sticky CUDA error): a new process
            del self.executors[key]
            ray.kill(handle, no_restart=True)
            return False

    def _choose(self, node_id: str, gpu_ids: list[str], shape: str) -> tuple:
        """The GPU Ray gave the trial; on a CPU node the slot with the fewest members (of its
        shape first where loads tie), so that a node's trials spread over all its slots."""
        if gpu_ids:
            key = (node_id, "cuda", gpu_ids[0])
        else:
            keys = [(node_id, "cpu", slot) for slot in range(self._cpu_slots(node_id))]
            load = {k: len(self.members.get(k, {})) for k in keys}
            key = min(keys, key=lambda k: (load[k], shape not in self.members.get(k, {}).values(), k[2]))
        if key not in self.executors:
            self.executors[key] = self._start(key)
        return key

    def _cpu_slots(self, node_id: str) -> int:
        cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node_id), 1)
        return max(1, int(cpus // self.cpus_per_trial))

    def _start(self, key: tuple):
        node_id, kind, slot = key
        self.started += 1
        name = f"tunefm-executor-{self.run_name}-{os.getpid()}-{self.started}"
        node_ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), "")
        facts = {"node_id": node_id, "node_ip": node_ip, "gpu_ids": "" if kind == "cpu" else str(slot)}
        actor = ray.remote(ExecutorActor).options(
            name=name, num_cpus=0, num_gpus=0, max_concurrency=4 * self.capacity + 16,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        # The executor finds the device of Ray's GPU id itself: it runs on that GPU's node, which
        # may not be this coordinator's.
        return actor.remote(self.arrays_ref, kind, self.threads, self.loop, self.fuse, self.capacity,
                            self.max_epochs, name, facts, gpu_id=None if kind == "cpu" else str(slot),
                            shape_trials=self.shape_trials)
