"""One device's trials trained together: the worker behind fused execution (`--fuse`).

    executor = Executor(arrays, "cpu", threads=1, loop="auto", fuse="auto", capacity=8, max_epochs=3)
    executor.join("t1", config_1)                  # fresh, or with a checkpoint's bytes
    executor.join("t2", config_2, state_bytes)
    metrics, state, facts = executor.next_epoch("t1")   # blocks until t1's next epoch is trained
    executor.leave("t2")                           # ASHA stopped it

An executor holds one device's copy of the data (train and validation splits, moved once)
and trains its member trials in rounds of one epoch each. A round starts when every member
has asked for its next epoch (a member that leaves stops being waited for; one that has not
asked after `patience_s` is set aside until it asks). Members of one shape (`fused.shape_key`)
train as one `fused.FusedGroup` of up to the calibrated group size (`calibrate.fusion_plan`);
a shape that does not gain from fusing trains each member alone with its calibrated loop.
Each member gets back its epoch's metrics (train and evaluation time are its share of its
group's), its checkpoint's state as bytes (saved from the CPU; the member trial writes the
checkpoint files, `run/checkpoints.py`, as a solo trial does) and where it ran. A trial that
reaches its last epoch leaves by itself. An error that leaves the CUDA context unusable (an
illegal access: `devices.is_sticky_error`) breaks the executor: every member fails at once,
`ping` raises, and the coordinator replaces it with a new process when Tune retries those
trials from their checkpoints. Nothing here imports Ray: the Ray actor around it is made in
`coordinator.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from tunefm.engine import calibrate, devices, fused, loops, models, training, training_plan, trial_config
from tunefm.tune import interrupt

log = logging.getLogger(__name__)


class ExecutorBroken(RuntimeError):
    """The executor's process can no longer train (its CUDA context is lost)."""


@dataclass
class _Member:
    trial_id: str
    config: dict
    limit: int  # its last epoch
    state: training.TrainingState | None = None  # when it trains alone
    group: fused.FusedGroup | None = None  # when it trains in a group
    pending: dict | None = None  # a checkpoint to start from, until placed
    asked: bool = False
    asked_at: float = 0.0
    parked: bool = False  # set aside after not asking in time: not waited for until it asks
    result: tuple | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Executor:
    """Trains its members in rounds on one device. Thread-safe: a Ray actor calls it from
    many threads. Groups change only in the round thread, between trainings; `join` and
    `leave` record what is to change and wake it."""

    def __init__(self, arrays: dict[str, np.ndarray], device: str, threads: int = 1, loop: str = loops.AUTO,
                 fuse: str = "auto", capacity: int = 8, max_epochs: int = 100, name: str = "executor",
                 facts: dict | None = None, patience_s: float = 300.0, gpu_id: str | None = None,
                 settle_s: float = 1.0, shape_trials: dict | None = None):
        """`device`: "cpu" or "cuda"; with `gpu_id` (Ray's id of a GPU of this node) the CUDA device
        is that GPU's index in this process, found here, on the executor's own node. `settle_s`: while
        it has room, a round starts only this long after the last trial joined (others are likely
        on their way: a round started without them would leave them waiting for its whole length).
        `shape_trials`: a grid's trials per shape (`fused.shape_key`): a shape's groups are measured
        and made no larger than its trials can fill (4 trials of a shape: groups of 2 and 4, not 16)."""
        interrupt.quiet_exit_during_garbage_collection()  # a Ray actor, stopped with SIGTERM
        torch.set_num_threads(max(1, threads))
        self.device = devices.for_ray_gpu(gpu_id) if gpu_id not in (None, "") else torch.device(device)
        if loop != loops.AUTO:
            devices.make_deterministic(self.device)
        self.threads, self.loop, self.fuse, self.capacity = max(1, threads), loop, fuse, capacity
        self.max_epochs, self.name, self.patience_s, self.settle_s = max_epochs, name, patience_s, settle_s
        self.shape_trials = dict(shape_trials or {})
        self._last_join = float("-inf")
        self.facts = {"device": self.device.type, "threads": self.threads, **(facts or {})}
        with devices.bound(self.device):
            self.x, self.y = training.to_tensors(arrays["train_x"], arrays["train_y"], self.device)
            self.val_x, self.val_y = training.to_tensors(arrays["val_x"], arrays["val_y"], self.device)
        self.members: dict[str, _Member] = {}
        self.groups: list[fused.FusedGroup] = []
        self.rounds = 0
        self._leaving: list[_Member] = []  # to take out of their groups before the next round
        self._groups_made = 0
        self._changed = threading.Condition()
        self._stopped = False
        self.broken: str | None = None  # why this process can no longer train (a sticky CUDA error)
        self._thread = threading.Thread(target=self._run_rounds, name=f"{name}-rounds", daemon=True)
        self._thread.start()

    # ---- what trials call ------------------------------------------------------------
    def ping(self) -> str:
        """Its name; raises ExecutorBroken once it can no longer train, so it is replaced."""
        if self.broken:
            raise ExecutorBroken(f"{self.name} can no longer train: {self.broken}")
        return self.name

    def join(self, trial_id: str, config: dict, state: bytes | None = None) -> None:
        """Add a trial; again after a retry, its checkpoint replacing what was here. Runs in a caller's
        thread, so it only reads the checkpoint, on the CPU: the round thread places it on the device."""
        saved = training.load_checkpoint(state) if state else None
        limit = trial_config.epoch_limit(config, self.max_epochs)
        with self._changed:
            if trial_id in self.members:
                self._leaving.append(self.members.pop(trial_id))
            if saved is None or saved["epoch"] < limit:  # a checkpoint of its last epoch: nothing left to train
                self.members[trial_id] = _Member(trial_id, dict(config), limit, pending=saved)
                self._last_join = time.monotonic()
            self._changed.notify_all()

    def next_epoch(self, trial_id: str) -> tuple[dict, bytes, dict] | None:
        """Block until this member's next epoch is trained: (metrics, the state's bytes, facts);
        None if it is not a member (it trained its last epoch, or left)."""
        with self._changed:
            if self.broken:
                raise ExecutorBroken(f"{self.name} can no longer train: {self.broken}")
            member = self.members.get(trial_id)
            if member is None:
                return None
            member.done.clear()
            member.asked, member.asked_at, member.result, member.error = True, time.monotonic(), None, None
            member.parked = False
            self._changed.notify_all()
        member.done.wait()
        if member.error is not None:
            raise member.error
        return member.result

    def leave(self, trial_id: str) -> bool:
        """Stop training a trial (stopped by ASHA, failed); False if it was not here."""
        with self._changed:
            member = self.members.pop(trial_id, None)
            if member is not None:
                self._leaving.append(member)
                self._changed.notify_all()
            return member is not None

    def status(self) -> dict:
        with self._changed:
            return {"name": self.name, "members": sorted(self.members), "groups": [len(g) for g in self.groups],
                    "rounds": self.rounds}

    def stop(self, wait_s: float = 30.0) -> None:
        """Stop after the round in progress, waiting up to `wait_s` for it (so no CUDA work is
        left running in a thread when the process exits)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=wait_s)

    # ---- rounds ----------------------------------------------------------------------
    def _ready(self) -> list[_Member]:
        """The next round's members, once every member has asked (or the first to ask has
        waited `patience_s`: then those that have not asked are set aside until they do), and,
        while there is room for more, no trial has joined in the last `settle_s`."""
        asked = [m for m in self.members.values() if m.asked]
        if not asked:
            return []
        if len(self.members) < self.capacity and time.monotonic() - self._last_join < self.settle_s:
            return []
        waiting = [m for m in self.members.values() if not m.asked and not m.parked]
        if waiting and time.monotonic() - min(m.asked_at for m in asked) < self.patience_s:
            return []
        for member in waiting:
            log.warning("%s: trial %s has not asked for its next epoch in %.0f s; training the others",
                        self.name, member.trial_id, self.patience_s)
            self._park(member)
        return asked

    def _run_rounds(self) -> None:
        with devices.bound(self.device):  # every CUDA call of this thread on the executor's own device
            self._rounds()

    def _rounds(self) -> None:
        while True:
            with self._changed:
                while not self._stopped and not (ready := self._ready()):
                    self._changed.wait(timeout=0.1)
                if self._stopped:
                    return
                for member in self._leaving:
                    self._remove(member)
                    if member.asked and not member.done.is_set():  # its trial is gone: free the thread waiting
                        member.error = RuntimeError(f"trial {member.trial_id} left executor {self.name}")
                        member.done.set()
                self._leaving.clear()
                for member in ready:
                    member.asked = False
                failed = self._place(ready)
                units = self._units([m for m in ready if m not in failed])
            for unit in units:  # training runs outside the lock: trials may ask, join and leave meanwhile
                try:
                    results = self._train(unit)
                except Exception as error:  # those trials fail (Tune retries them); the others go on
                    log.exception("%s: training %d member(s) failed", self.name, len(unit))
                    if devices.is_sticky_error(error):  # nothing more trains in this process
                        self._break(error)
                        return
                    self._fail(unit, error)
                    continue
                with self._changed:
                    for member, result in zip(unit, results):
                        member.result = result
                        if result[0]["epoch"] >= member.limit and self.members.get(member.trial_id) is member:
                            self._leaving.append(self.members.pop(member.trial_id))  # its last epoch
                        member.done.set()
            with self._changed:
                self.rounds += 1

    def _break(self, error: BaseException) -> None:
        """Fail every member (Tune retries them from their checkpoints, on a new executor) and
        stop: the device's context is lost for this process."""
        with self._changed:
            self.broken = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            members = list(self.members.values())
        self._fail(members, ExecutorBroken(f"{self.name} can no longer train: {self.broken}"))

    def _fail(self, members: list[_Member], error: BaseException) -> None:
        with self._changed:
            for member in members:
                if self.members.get(member.trial_id) is member:
                    self._leaving.append(self.members.pop(member.trial_id))
                member.error = error
                member.done.set()

    # ---- placing members (round thread, under the lock) ------------------------------
    def _steps(self, member: _Member) -> int:
        return training_plan.training_steps(member.config, len(self.y), self.max_epochs)

    def _place(self, members: list[_Member]) -> list[_Member]:
        """Put members not yet placed where their plan says; returns those that could not be."""
        failed = []
        for member in members:
            if member.group is not None or member.state is not None:
                continue
            saved, member.pending = member.pending, None
            try:
                how = training_plan.plan_trial(member.config, self.device, self.loop, self._steps(member), saved,
                                               self.fuse, self.threads, self.largest_group(member.config))
                plan, solo_loop, loop = how.group, None, how.loop
                if plan is None:
                    if loop != "captured":
                        member.state = training.init_state(member.config, self.device, loop)
                        if saved:
                            member.state.load_state_dict(saved)
                        continue
                    # The captured solo loop is a group of one with its step as a CUDA graph (as `solo.fit`).
                    plan, solo_loop = calibrate.FusionPlan(1, "captured", 0.0, 0.0), loop
                key = fused.shape_key(member.config)
                group = None if solo_loop else next(
                    (g for g in self.groups if g.key == key and g.variant == plan.variant and not g.solo_loop
                     and len(g) < plan.group_size), None)
                if group is None:
                    group = fused.FusedGroup(self.device, capture=plan.variant == "captured",
                                             onednn=plan.variant != "native_conv")
                    self._groups_made += 1
                    group.variant, group.id = plan.variant, f"{self.name}/g{self._groups_made}"
                    group.solo_loop = solo_loop  # a trial's own loop, not a fused group
                    self.groups.append(group)
                group.add(member.config, saved, member_id=member.trial_id)
                member.group = group
            except Exception as error:  # a damaged checkpoint, say
                log.exception("%s: cannot place trial %s", self.name, member.trial_id)
                self.members.pop(member.trial_id, None)
                member.error = error
                member.done.set()
                failed.append(member)
        return failed

    def largest_group(self, config: dict) -> int:
        """The largest group of config's shape worth measuring and making here: the capacity, or
        fewer where the grid has fewer trials of that shape."""
        return max(1, min(self.capacity, self.shape_trials.get(fused.shape_key(config), self.capacity)))

    def _park(self, member: _Member) -> None:
        """Out of its group or solo state, its state kept as a checkpoint to be placed again."""
        if member.group is not None:
            member.pending = member.group.state_dict(member.group.slot_of(member.trial_id))
            if member.group.solo_loop:  # placed again in its own loop
                member.pending["loop"] = member.group.solo_loop
        elif member.state is not None:
            member.pending = member.state.state_dict()
        self._remove(member)
        member.parked = True

    def _remove(self, member: _Member) -> None:
        if member.group is not None:
            member.group.remove(member.group.slot_of(member.trial_id))
            if not len(member.group):
                self.groups.remove(member.group)
        member.group = member.state = None

    def _units(self, ready: list[_Member]) -> list[list[_Member]]:
        """What trains as one: each group whole, in slot order (every member of a group is
        ready: those that were not were set aside), and each member alone."""
        by_id = {m.trial_id: m for m in ready}
        units, seen = [], set()
        for member in ready:
            if member.group is None:
                units.append([member])
            elif id(member.group) not in seen:
                seen.add(id(member.group))
                units.append([by_id[trial_id] for trial_id in member.group.member_ids])
        return units

    # ---- training (round thread, outside the lock) -----------------------------------
    def _train(self, unit: list[_Member]) -> list[tuple[dict, bytes, dict]]:
        started = time.perf_counter()
        group = unit[0].group
        if group is not None:
            train = group.train_epoch(self.x, self.y)
            trained = time.perf_counter()
            val = group.evaluate(self.val_x, self.val_y)
            states = group.state_dicts()
            if group.solo_loop:  # a trial alone in its captured loop, which may have run eagerly (short epochs)
                states = [{**states[0], "loop": group.solo_loop}]
                facts = {"execution": group.ran, "fused_group": "", "group_size": 1}
            else:
                facts = {"execution": f"fused:{group.ran}", "fused_group": group.id, "group_size": len(group)}
            facts["params"] = sum(p[0].numel() for p in group.params.values())
        else:
            state, config = unit[0].state, unit[0].config
            loss_fn = training.loss_function(config)
            with loops.kernels(state.loop):
                train = [training.train_epoch(state.model, state.optimizer, self.x, self.y, int(config["batch_size"]),
                                               state.generator, loss_fn, bool(config.get("augment", False)),
                                               state.scheduler)]
            trained = time.perf_counter()
            val = [training.evaluate(state.model, self.val_x, self.val_y, loss_fn=loss_fn)]
            state.epoch += 1
            states = [state.state_dict()]
            facts = {"execution": state.loop, "fused_group": "", "group_size": 1,
                     "params": models.count_params(state.model)}
        elapsed, train_s = time.perf_counter() - started, trained - started
        results = []
        for (train_loss, train_acc), (val_loss, val_acc), state in zip(train, val, states):
            epoch = state["epoch"]
            metrics = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                       "val_acc": val_acc, "epoch_time_s": elapsed / len(unit), "train_time_s": train_s / len(unit),
                       "checkpoint_score": training.checkpoint_score(val_acc, epoch)}
            results.append((metrics, training.checkpoint_bytes(state), {**self.facts, **facts}))
        return results
