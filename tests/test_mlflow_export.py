"""`tunefm export --mlflow-uri`: a run into a real local MLflow store (SQLite), read back with
`mlflow.search_runs` and `MlflowClient.get_metric_history`; a second export updates; bad
input is one Error line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import tiny_run

from tunefm.cli import main
from tunefm.run import store


def export(*args):
    return CliRunner().invoke(main, ["export", *args])


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A SQLite store in tmp_path; MLflow puts its artifacts under ./mlruns, so the test
    runs there too."""
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_every_trial_and_epoch_round_trips(small_fourfam, mlflow_uri, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    done = export(str(small_fourfam), "--mlflow-uri", mlflow_uri)
    assert done.exit_code == 0, done.output
    trials, epochs = store.read_trials(small_fourfam), store.read_epochs(small_fourfam)
    assert done.output.splitlines()[-1].endswith(
        f"16 trial run(s) created, 0 updated, {len(epochs)} epoch(s) logged")
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["tunefm/fourfam"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(children) == len(trials) == 16
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert parent["params.study.name"].iloc[0] == "fourfam" and parent["params.option.max_epochs"].iloc[0] == "3"
    client = MlflowClient(mlflow_uri)
    saved = client.download_artifacts(parent["run_id"].iloc[0], "run.json", str(tmp_path))
    assert json.loads(Path(saved).read_text()) == store.read_json(small_fourfam / store.RUN_FILE)
    by_trial = children.set_index("tags.tunefm.trial_id")
    for row in trials.itertuples():
        child = by_trial.loc[row.trial_id]
        assert child["params.lr"] == str(row.lr) and child["params.model"] == row.model
        assert child["tags.tunefm.stopped_early"] == str(bool(row.stopped_early))
        history = epochs[epochs.trial_id == row.trial_id].sort_values("epoch")
        for metric in ("train_loss", "val_acc", "val_loss", "train_acc"):
            logged = client.get_metric_history(child["run_id"], metric)
            assert [m.step for m in sorted(logged, key=lambda m: m.step)] == history.epoch.tolist()
            assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(history[metric].tolist())
        assert child["metrics.best_val_acc"] == pytest.approx(row.best_val_acc)
        if pd.notna(row.test_acc):
            assert child["metrics.test_acc"] == pytest.approx(row.test_acc)
            assert "confusion.json" in [f.path for f in client.list_artifacts(child["run_id"])]
        assert child["status"] == "FINISHED"


def test_a_second_export_updates_instead_of_duplicating(small_fourfam, mlflow_uri, tmp_path):
    import mlflow

    assert export(str(small_fourfam), "--mlflow-uri", mlflow_uri, "--experiment", "mine").exit_code == 0
    again = export(str(small_fourfam), "--mlflow-uri", mlflow_uri, "--experiment", "mine")
    assert again.exit_code == 0 and again.output.splitlines()[-1].endswith(
        "0 trial run(s) created, 16 updated, 0 epoch(s) logged")
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["mine"])
    assert len(runs) == 17
    from mlflow.tracking import MlflowClient

    child = runs[runs["tags.mlflow.parentRunId"].notna()].iloc[0]
    assert len(MlflowClient(mlflow_uri).get_metric_history(child["run_id"], "best_val_acc")) == 1
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert len(MlflowClient(mlflow_uri).get_metric_history(parent["run_id"], "study_best_val_acc")) == 1


def test_bad_input_is_one_error_line(tmp_path, mlflow_uri):
    run_dir = tiny_run(tmp_path / "run")
    bad_scheme = export(str(run_dir), "--mlflow-uri", "nosuch://x")
    assert bad_scheme.exit_code == 1 and bad_scheme.output.startswith("Error: cannot use --mlflow-uri nosuch://x: ")
    assert bad_scheme.output.count("\n") == 1
    not_a_run = export(str(tmp_path), "--mlflow-uri", mlflow_uri)
    assert not_a_run.exit_code == 1 and "is not a run folder" in not_a_run.output
    missing = CliRunner(env={"MLFLOW_TRACKING_URI": None}).invoke(main, ["export", str(run_dir)])
    assert missing.exit_code == 1 and missing.output.startswith("Error: give --mlflow-uri URI (or set MLFLOW_")
    from_env = CliRunner(env={"MLFLOW_TRACKING_URI": mlflow_uri}).invoke(main, ["export", str(run_dir)])
    assert from_env.exit_code == 0 and f"at {mlflow_uri}: parent run" in from_env.output


def test_a_server_that_does_not_answer_is_one_error_line_not_minutes_of_retries(tmp_path):
    run_dir = tiny_run(tmp_path / "run")
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # MLflow's own retries would take about 4 minutes here; the limit only guards a hang
    done = subprocess.run([sys.executable, "-m", "tunefm.cli", "export", str(run_dir), "--mlflow-uri",
                           f"http://127.0.0.1:{port}"], capture_output=True, text=True, cwd=tmp_path, timeout=90,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP")})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"Error: cannot use --mlflow-uri http://127.0.0.1:{port}: no tracking server answered "
                           "(Connection refused); give a tracking server (http://host:5000), a database "
                           "(sqlite:///mlflow.db) or a folder (file:///path/mlruns)\n")


def test_without_mlflow_the_command_says_how_to_install_it(tmp_path):
    run_dir = tiny_run(tmp_path / "run")
    code = ("import sys; sys.modules['mlflow'] = None\n"  # as if it were not installed
            "from tunefm.cli import main\n"
            f"main(['export', {str(run_dir)!r}, '--mlflow-uri', 'sqlite:///x.db'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == 'Error: MLflow is not installed; pip install -e ".[mlflow]" (or pip install mlflow)\n'
