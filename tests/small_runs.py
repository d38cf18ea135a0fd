"""Small real runs built in the test session without Ray, for the fast tier's analysis,
summary, report and evaluate tests.

    run_dir = small_fourfam(tmp / "small", data_dir)

`small_fourfam` is the fourfam study cut to every model x 2 learning rates x 2 batch
sizes (16 trials), 3 epochs on 512 training and 256 validation images: each trial is
really trained (solo.fit), ASHA (tunefm's own scheduler object) decides after every
epoch whether it goes on, every epoch goes through the Parquet writer and leaves a
checkpoint where Tune would, the winners are evaluated on 256 test images
(evaluate.evaluate_trials), each trial keeps its best checkpoint (retention.py), and
run.json is a RunRecord. About 10 seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

from tunefm.engine import data, models, solo
from tunefm.run import checkpoints, record, store
from tunefm.run.writer import RunWriter
from tunefm.searchers.grid import trial_order
from tunefm.tune import evaluate, lifecycle, placement, search
from tunefm.tune.settings import SearchSettings

SMALL_FOURFAM = dict(space="fourfam", max_epochs=3, train_size=512, val_size=256, test_size=256,
                     sets=("lr=0.005,0.01", "batch_size=32,128"))


def small_fourfam(run_dir: Path, data_dir: Path) -> Path:
    settings = SearchSettings(**SMALL_FOURFAM, data_dir=str(data_dir), name=run_dir.name,
                                     results_dir=str(run_dir.parent))
    study = search.build_study(settings)
    splits = data.load(settings.data_dir, settings.train_size, settings.val_size, settings.test_size)
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    run_dir.mkdir(parents=True)
    writer = RunWriter(run_dir, study.max_epochs, study.config_keys())
    asha = search.make_scheduler(study, settings)
    torch.set_num_threads(1)
    started = time.time()
    for number, config in enumerate(trial_order(study.configs(), settings.seed)):  # the order a search starts them
        trial_id = f"t{number:03d}"
        trial = SimpleNamespace(trial_id=trial_id)
        asha.on_trial_add(None, trial)
        writer.set_status(trial_id, config, "RUNNING")
        began = time.perf_counter()
        for metrics, state in solo.fit(config, arrays, study.max_epochs, torch.device("cpu")):
            folder = run_dir / store.TUNE_DIR / trial_id / f"checkpoint_{metrics['epoch'] - 1:06d}"
            folder.mkdir(parents=True)
            torch.save(state.state_dict(), folder / checkpoints.STATE_FILE)
            (folder / checkpoints.META_FILE).write_text(json.dumps({"epoch": metrics["epoch"],
                                                                        "val_acc": metrics["val_acc"]}))
            writer.add_epoch(trial_id, config, {
                **metrics, "time_total_s": time.perf_counter() - began, "params": models.count_params(state.model),
                "device": "cpu", "node_id": "n0", "node_ip": "127.0.0.1", "gpu_fraction": 0.0, "gpu_ids": "",
                "threads": 1, "execution": state.loop, "fused_group": "", "group_size": 1, "started_at": started})
            decision = asha.on_trial_result(None, trial, {"epoch": metrics["epoch"], "val_acc": metrics["val_acc"]})
            if decision == "STOP":
                break
        writer.set_status(trial_id, config, "TERMINATED", stopped_at_rung=asha.stopped_at.get(trial_id))
    writer.compact()
    evaluation = evaluate.evaluate_trials(run_dir, splits.test_x, splits.test_y, study.test_top, echo=lambda s: None,
                                          device=torch.device("cpu"))
    run_record = record.RunRecord(
        study=study.record(), options=asdict(settings), host=socket.gethostname(), pid=os.getpid(),
        versions=record.versions(), status="running", started_at=record.now(), data=splits.record(),
        fusion=placement.Decision(False, 1, "trained by hand").record(), events=[record.event("started")])
    pruning = lifecycle.make_pruning(settings, str((run_dir / store.TUNE_DIR).resolve()), study)
    pruning.after_search(store.read_trials(run_dir))  # as a search ends: each trial's best checkpoint stays
    run_record.evaluated(evaluation.record()).completed(failed_trials=0, checkpoints=pruning.record()).save(run_dir)
    return run_dir
