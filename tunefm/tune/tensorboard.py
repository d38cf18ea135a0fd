"""A Ray Tune callback that writes each trial's curves as TensorBoard events in the run folder.

    tensorboard --logdir results/<run>/tensorboard

One event folder per trial (`tensorboard/<trial_id>/`), written by the driver as each
epoch arrives and flushed at once, so TensorBoard shows a running search live, and on
the driver's disk even when `--storage` puts the checkpoints in a bucket. Tune's own
TensorBoard logger is left out (`search.make_callbacks`): it wrote the same scalars
again into `tune/<trial_id>/`, a staging folder copied to the storage every few minutes.

Scalars per epoch: loss/train, loss/val, accuracy/train, accuracy/val, time/epoch_s.

The HParams tab: the experiment (every config key of the study, with its values or range,
and every metric tag) is written once, at the root (`tensorboard/`), so a study whose
variants set different keys still shows every column; each trial's folder holds its
session start (its config, at its first epoch) and, when it ends, hparam/best_val_acc and
its session end (success, or failure for a trial that errored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search.sample import Categorical, Float, Integer
from tensorboardX import FileWriter, SummaryWriter
from tensorboardX.proto.api_pb2 import DataType, Experiment, HParamInfo, Interval, MetricInfo, MetricName, Status
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.summary import hparams

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
           "accuracy/val": "val_acc", "time/epoch_s": "epoch_time_s"}  # tag -> reported metric
BEST_TAG = "hparam/best_val_acc"
METRIC_TAGS = [BEST_TAG, *SCALARS]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def hparam_infos(study) -> list:
    """One HParamInfo per config key of `study`: its type, and its values (a grid's, a choice's,
    a fixed one's) or its range (a drawn float or integer)."""

    configs = study.search.configs(study) or []
    base = study.base_config()
    infos = []
    for key in study.config_keys():
        domain = study.space.get(key)
        if isinstance(domain, (Float, Integer)):
            infos.append(HParamInfo(name=key, type=DataType.Value("DATA_TYPE_FLOAT64"), domain_interval=Interval(
                min_value=float(domain.lower), max_value=float(domain.upper))))
            continue
        if isinstance(domain, Categorical):
            values = list(domain.categories)
        elif configs:
            values = list(dict.fromkeys(_plain(c[key]) for c in configs if key in c))
        else:
            values = [base[key]] if key in base else []
        kind = ("DATA_TYPE_BOOL" if values and all(isinstance(v, bool) for v in values) else
                "DATA_TYPE_STRING" if any(isinstance(v, str) for v in values) else "DATA_TYPE_FLOAT64")
        info = HParamInfo(name=key, type=DataType.Value(kind))
        if values:
            cast = str if kind == "DATA_TYPE_STRING" else (bool if kind == "DATA_TYPE_BOOL" else float)
            info.domain_discrete.extend(sorted({cast(v) for v in values}))
        infos.append(info)
    return infos


def _hparams_summary(tag: str, **data):
    """A Summary carrying HParams plugin data (an experiment, a session start or end) under `tag`."""

    content = HParamsPluginData(version=0, **data).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def write_experiment(log_dir: Path, study) -> None:
    """The HParams experiment at the TensorBoard root (once: a resumed run keeps its own)."""

    log_dir.mkdir(parents=True, exist_ok=True)
    if any(p.is_file() and p.name.startswith("events.") for p in log_dir.iterdir()):
        return
    experiment = Experiment(name=study.name, description=study.description, hparam_infos=hparam_infos(study),
                            metric_infos=[MetricInfo(name=MetricName(tag=tag)) for tag in METRIC_TAGS])
    writer = FileWriter(str(log_dir))
    writer.add_summary(_hparams_summary("_hparams_/experiment", experiment=experiment))
    writer.close()


def session_start(config: dict):
    """A trial's HParams session start: its config values."""

    plain = {k: _plain(v) for k, v in config.items() if isinstance(_plain(v), (int, float, str, bool))}
    return hparams(plain, {})[1]


def session_end(status: str):
    """A trial's HParams session end: Tune's TERMINATED is a success, ERROR a failure."""

    code = "STATUS_FAILURE" if status == "ERROR" else "STATUS_SUCCESS"
    return _hparams_summary("_hparams_/session_end_info", session_end_info=SessionEndInfo(status=Status.Value(code)))


class TensorBoardWriter(Callback):
    def __init__(self, log_dir: Path, study=None):
        self.log_dir = Path(log_dir)
        self.writers: dict[str, object] = {}
        if study is not None:
            write_experiment(self.log_dir, study)

    def _writer(self, trial):
        if trial.trial_id not in self.writers:

            writer = SummaryWriter(str(self.log_dir / trial.trial_id))
            # Into the trial's own event file: SummaryWriter.add_hparams would open a second
            # writer, whose file can get the same name (it is made from the current second).
            writer.file_writer.add_summary(session_start(trial.config))
            self.writers[trial.trial_id] = writer
        return self.writers[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer = self._writer(trial)
        for tag, metric in SCALARS.items():
            if result.get(metric) is not None:
                writer.add_scalar(tag, result[metric], global_step=int(result["epoch"]))
        writer.flush()

    def _close(self, trial, status: str | None) -> None:
        writer = self.writers.pop(trial.trial_id, None)
        if writer is None:
            return
        # A writer exists only once a result did; Tune keeps each metric's running max.
        writer.add_scalar(BEST_TAG, trial.metric_analysis["val_acc"]["max"])
        if status is not None:  # an interrupted trial's session goes on after a resume
            writer.file_writer.add_summary(session_end(status))
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._close(trial, None)
