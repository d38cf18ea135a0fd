"""`tunefm export RUN --mlflow-uri URI`: a run into the MLflow tracking server a team already uses.

    outcome = mlflow_export.export(run_dir, "sqlite:///mlflow.db", experiment=None)   # default: tunefm/<study>
    outcome.parent_id, outcome.created, outcome.updated

What MLflow gets:
- a parent run for the study (named after the run folder): the study and its options as
  params (`study.*`, `option.*`), the best val and test accuracy as metrics, run.json as an
  artifact, and tags naming the run folder;
- a nested run per trial (`mlflow.parentRunId`, named by trial id): its config as params,
  every epoch's train_loss, train_acc, val_loss, val_acc, epoch_time_s and time_total_s
  with `step=epoch` (and the time it was reported), its summary (best_val_acc, best_epoch,
  test_acc, test_loss) as metrics, its status and whether ASHA stopped it as tags, and the
  test-set confusion matrix (`confusion.json`) as an artifact where it was evaluated.

Exporting again updates instead of duplicating: the parent is found by its tags (the run
folder's name and start time), each trial by its trial id; only epochs MLflow does not
hold yet are logged (a run exported while it was running gets the rest), and a test metric
is logged again only if it changed (a re-evaluation). MLflow is an optional extra
(`pip install -e ".[mlflow]"`); without it the command says so in one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tunefm import optional
from tunefm.engine.trial_config import is_missing
from tunefm.errors import UserError
from tunefm.run import store
from tunefm.run.columns import EPOCH_METRICS
from tunefm.run.trial_summary import config_columns

SUMMARY_METRICS = ["best_val_acc", "best_epoch", "test_acc", "test_loss"]
RUN_TAG, STARTED_TAG, TRIAL_TAG = "tunefm.run", "tunefm.started_at", "tunefm.trial_id"
BATCH = 900  # MLflow takes at most 1000 metrics per log_batch
STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED", "INTERRUPTED": "KILLED"}


@dataclass
class Exported:
    experiment: str
    parent_id: str
    created: list[str] = field(default_factory=list)  # trial ids new in MLflow
    updated: list[str] = field(default_factory=list)  # trial ids that were there already
    epochs_logged: int = 0


@contextmanager
def _answer_promptly():
    """MLflow retries a request 7 times with backoff (about 4 minutes) before it gives up,
    so a wrong host or port would look like a hang: the first request gets no retries and
    a 10 s timeout, unless the user set MLflow's own variables. Later requests keep
    MLflow's retries (its sessions are cached per retry setting, so this one is apart)."""
    promptly = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = {name: value for name, value in promptly.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def client_for(uri: str):
    """An MlflowClient for `uri` that has answered once; a UserError if MLflow is missing or
    the URI does not lead to a tracking store."""
    MlflowClient = optional.load("mlflow.tracking").MlflowClient
    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." and the like
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        with _answer_promptly():
            client.search_experiments(max_results=1)
    except Exception as e:  # a bad scheme, a server that does not answer, a folder we cannot write
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        unreachable = re.search(r"\[Errno -?\d+\] ([^\"')]+)|(Read timed out|timed out)", reason)
        if unreachable:  # requests' own message is three nested exceptions long
            reason = f"no tracking server answered ({unreachable.group(1) or unreachable.group(2)})"
        raise UserError(f"cannot use --mlflow-uri {uri}: {reason}; give a tracking server (http://host:5000), "
                        f"a database (sqlite:///mlflow.db) or a folder (file:///path/mlruns)") from None
    return client


def _number(value: Any) -> float | None:
    return None if is_missing(value) else float(value)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _param(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else str(value)


def changed_metrics(client, run_id: str, values: dict[str, Any], fresh: bool) -> list:
    """Metrics for `values` (key -> number or missing) that MLflow does not hold yet: all of them
    on a fresh run; on one exported before, those whose latest logged value differs (logged
    at the next step, so the latest is the current one)."""
    Metric = optional.load("mlflow.entities").Metric
    metrics = []
    for key, value in values.items():
        value = _number(value)
        if value is None:
            continue
        previous = [] if fresh else client.get_metric_history(run_id, key)
        if not previous or previous[-1].value != value:
            metrics.append(Metric(key, value, _ms(time.time()), len(previous)))
    return metrics


def export(run_dir: Path, uri: str, experiment: str | None = None,
           echo: Callable[[str], None] = print) -> Exported:
    run = store.load_run(Path(run_dir))  # one-line errors for a folder that is not a run
    client = client_for(uri)  # and for MLflow missing, or a URI it cannot use
    entities = optional.load("mlflow.entities")
    Metric, Param, RunTag = entities.Metric, entities.Param, entities.RunTag

    info, trials, epochs = run.info, run.trials, run.epochs
    study = info.get("study", {})
    name = experiment or f"tunefm/{study.get('name') or run.run_dir.name}"
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)
    started = info.get("started_at") or ""
    filter_string = f"tags.`{RUN_TAG}` = '{run.run_dir.name}' and tags.`{STARTED_TAG}` = '{started}'"
    parents = [r for r in client.search_runs([experiment_id], filter_string)
               if "mlflow.parentRunId" not in r.data.tags]
    if parents:
        parent_id, parent_is_new = parents[0].info.run_id, False
    else:
        parent_is_new = True
        parent = client.create_run(experiment_id, run_name=run.run_dir.name,
                                   tags={RUN_TAG: run.run_dir.name, STARTED_TAG: started, "tunefm.kind": "study"})
        parent_id = parent.info.run_id
        params = {f"study.{k}": v for k, v in study.items() if k in ("name", "source", "searcher", "max_epochs",
                                                                     "num_trials", "test_top", "grid", "space")}
        params.update({f"option.{k}": v for k, v in info.get("options", {}).items() if v is not None})
        client.log_batch(parent_id, params=[Param(k, _param(v)[:6000]) for k, v in params.items()])
    outcome = Exported(name, parent_id)
    children = {r.data.tags.get(TRIAL_TAG): r.info.run_id
                for r in client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")}
    keys = config_columns(trials)
    histories = {tid: h.sort_values("epoch") for tid, h in epochs.groupby("trial_id")} if len(epochs) else {}
    confusion = {tid: g for tid, g in run.confusion.groupby("trial_id")} if len(run.confusion) else {}
    for row in trials.itertuples(index=False):
        row = row._asdict()
        trial_id = row["trial_id"]
        history = histories.get(trial_id, pd.DataFrame(columns=["epoch", *EPOCH_METRICS]))
        begin = _number(row.get("started_at")) or time.time()
        run_id = children.get(trial_id)
        fresh = run_id is None
        if fresh:
            run_id = client.create_run(experiment_id, start_time=_ms(begin), run_name=trial_id,
                                       tags={"mlflow.parentRunId": parent_id, TRIAL_TAG: trial_id}).info.run_id
            config = {k: row[k] for k in keys if not is_missing(row[k])}
            client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in config.items()])
            outcome.created.append(trial_id)
            held = 0
        else:
            outcome.updated.append(trial_id)
            held = max((m.step for m in client.get_metric_history(run_id, "val_acc")), default=0)
        metrics = []
        for epoch_row in history[history["epoch"] > held].itertuples(index=False):
            epoch_row = epoch_row._asdict()
            at = _ms(begin + (_number(epoch_row.get("time_total_s")) or 0.0))
            metrics += [Metric(k, v, at, int(epoch_row["epoch"])) for k in EPOCH_METRICS
                        if k in epoch_row and (v := _number(epoch_row[k])) is not None]
            outcome.epochs_logged += 1
        metrics += changed_metrics(client, run_id, {key: row.get(key) for key in SUMMARY_METRICS}, fresh)
        for start in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[start:start + BATCH])
        client.log_batch(run_id, tags=[RunTag("tunefm.status", str(row["status"])),
                                       RunTag("tunefm.stopped_early", str(bool(row.get("stopped_early"))))])
        if trial_id in confusion:
            matrix = confusion[trial_id]
            client.log_dict(run_id, {"classes": "Fashion-MNIST labels 0-9", "true_label": matrix["true_label"].tolist(),
                                     "pred_label": matrix["pred_label"].tolist(), "count": matrix["count"].tolist()},
                            "confusion.json")
        if row["status"] in STATUS:
            end = begin + (_number(row.get("total_time_s")) or 0.0)
            client.set_terminated(run_id, STATUS[row["status"]], end_time=_ms(end))
    best = {f"study_{k}": trials[k].max() for k in ("best_val_acc", "test_acc") if k in trials}
    client.log_batch(parent_id, metrics=changed_metrics(client, parent_id, best, parent_is_new))
    client.log_dict(parent_id, info, "run.json")
    if info.get("status", "").startswith("completed"):
        client.set_terminated(parent_id, "FINISHED")
    echo(f"MLflow experiment {name!r} at {uri}: parent run {parent_id}; {len(outcome.created)} trial run(s) "
         f"created, {len(outcome.updated)} updated, {outcome.epochs_logged} epoch(s) logged")
    return outcome
