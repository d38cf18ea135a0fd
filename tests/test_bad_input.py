"""Every user mistake through the real CLI: one `Error: ...` line, a non-zero exit, no
traceback, and the results folder exactly as it was (checked file by file, bytes and
modification times, after every command)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import tiny_run, write_idx
from local_cluster import free_port

from tunefm.cli import main
from tunefm.run import store
from tunefm.tune import search
from tunefm.tune.settings import SearchSettings

TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def damaged_copy(root: Path, data_dir: Path, name: str, damage) -> Path:
    """The real files as links, but for one that `damage(folder)` writes."""
    folder = root / name
    folder.mkdir()
    for source in data_dir.iterdir():
        (folder / source.name).symlink_to(source)
    damage(folder)
    return folder


def replace(folder: Path, name: str, write) -> None:
    (folder / name).unlink()
    write(folder / name)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, data_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged")
    test_images = gzip.decompress((data_dir / TEST_IMAGES).read_bytes())
    truncated = gzip.compress(test_images[:-1000], compresslevel=1)  # fast: any level reads the same
    labels_out_of_range = np.zeros(10_000)
    labels_out_of_range[17] = 12
    damages = {
        "truncated": lambda f: replace(f, TEST_IMAGES, lambda p: p.write_bytes(truncated)),
        "magic": lambda f: replace(f, TEST_LABELS, lambda p: write_idx(p, np.zeros(10_000), magic=2058)),
        "counts": lambda f: replace(f, TEST_LABELS, lambda p: write_idx(p, np.zeros(9_999))),
        "labels": lambda f: replace(f, TEST_LABELS, lambda p: write_idx(p, labels_out_of_range)),
    }
    return {name: damaged_copy(root, data_dir, name, damage) for name, damage in damages.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder with runs to protect: a finished one, an interrupted one whose Tune
    state is gone, one that is still running (this process), an empty and a damaged one."""
    results = tmp_path_factory.mktemp("results")
    tiny_run(results / "done")
    interrupted = tiny_run(results / "stateless", finished=False)
    fourfam = json.loads(json.dumps(search.build_study(SearchSettings()).record(), default=str))
    store.write_json({**store.read_json(interrupted / store.RUN_FILE), "status": "interrupted", "study": fourfam,
                      "options": {"space": "fourfam"}}, interrupted / store.RUN_FILE)
    running = tiny_run(results / "busy", finished=False)
    store.write_json({**store.read_json(running / store.RUN_FILE), "pid": os.getpid(),
                      "host": socket.gethostname()}, running / store.RUN_FILE)
    (results / "empty").mkdir()
    store.write_parquet(pd.DataFrame({"trial_id": pd.Series([], dtype=str)}), results / "empty" / store.TRIALS_FILE)
    tiny_run(results / "corrupt")
    next((results / "corrupt" / store.EPOCHS_FILE).glob("*.parquet")).write_bytes(b"PAR1 not really parquet")
    return results


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under `folder`: its content hash and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(folder))] = (digest, path.stat().st_mtime_ns)
    return found


def study_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "study.py"
    path.write_text(body)
    return str(path)


UNWRITABLE = "/proc/tunefm-results"  # even root cannot make a folder here
GRID = ("from tunefm.study import Study\n"
        "STUDY = Study(name='mine', description='', grid={grid}, fixed={{'model': 'iaro1', 'batch_size': 8}})\n")
OPTUNA = ("from ray import tune\nfrom tunefm.study import Study\n"
          "STUDY = Study(name='o', description='', searcher='optuna', sampler='{sampler}', num_samples=3, "
          "fixed={{'model': 'iaro1'}}, space={{'lr': tune.loguniform(1e-3, 0.1), 'momentum': tune.uniform(0.5, 0.9), "
          "'batch_size': tune.choice([8, 16])}})\n")

# (arguments, the one error line's text); {results}, {data}, {tmp}, {damaged:<name>} and {port} are filled in
SEARCH_MISTAKES = [
    (["--space", "nope"], "unknown study 'nope'; valid studies: cnn2-tpe, cnn5, fourfam, kernels"),
    (["--space", "{file:STUDY = (}"], "has a syntax error at line 1"),
    (["--space", "{file:X = 1}"], "must define STUDY = tunefm.study.Study(...)"),
    (["--space", "{file:from tunefm.study import Study\nSTUDY = Study(name='e', description='', grid={})\n}"],
     "has an empty grid"),
    (["--space", "{file:" + GRID.format(grid="{'lr': []}") + "}"], "grid['lr'] must be a non-empty list"),
    (["--set", "model=resnet"], "unknown model 'resnet'; valid models: "),
    (["--set", "optimizer=rmsprop"], "optimizer must be 'sgd' or 'adam', got optimizer='rmsprop'"),
    (["--set", "colour=red"], "unknown config key 'colour' in --set; valid keys: model, lr, batch_size"),
    (["--set", "lr=0"], "lr must be a number > 0, got lr=0"),
    (["--set", "lr=-0.1"], "lr must be a number > 0, got lr=-0.1"),
    (["--set", "batch_size=0"], "batch_size must be an integer >= 1, got batch_size=0"),
    (["--max-epochs", "0"], "--max-epochs must be >= 1, got 0"),
    (["--max-failures", "-1"], "--max-failures must be >= 0, got -1"),
    (["--train-size", "-5"], "--train-size must be between 1 and 59900 (60,000 training images minus --val-size 100), "
                             "got -5"),
    (["--train-size", "70000"], "--train-size must be between 1 and 59900 (60,000 training images minus --val-size "
                                "100), got 70000"),
    (["--data-dir", "{tmp}/no-such-folder"], "data folder {tmp}/no-such-folder does not exist"),
    (["--data-dir", "{damaged:truncated}"], "is truncated"),
    (["--data-dir", "{damaged:magic}"], "has magic number 2058, expected 2049"),
    (["--data-dir", "{damaged:counts}"], "holds 10000 images but its label file holds 9999 labels"),
    (["--data-dir", "{damaged:labels}"], "has label 12; labels must be 0..9"),
    (["--results", UNWRITABLE], f"cannot create run folder {UNWRITABLE}/new: /proc is not writable"),
    (["--name", "done"], "run {results}/done already exists; choose another --name, or add --resume to continue it"),
    (["--address", "127.0.0.1:{port}"], "no Ray cluster answers at --address 127.0.0.1:{port} (Connection refused)"),
    (["--gpus-per-trial", "64"], "--gpus-per-trial 64 can never be met: the largest node has"),
    (["--fuse", "maybe"], "Invalid value for '--fuse': 'maybe' is not one of 'auto', 'on', 'off'."),
    (["--group-size", "1"], "--group-size must be >= 2, got 1"),
    (["--keep-checkpoints", "some"], "Invalid value for '--keep-checkpoints': 'some' is not one of 'best', 'all'."),
    (["--loop", "fast"], "Invalid value for '--loop': 'fast' is not one of 'auto', 'plain', 'channels_last'"),
    (["--objectives", "val_acc:max,accuracy:max"], "--objectives: 'accuracy' names no epoch or trial column; valid: "
                                                   "train_loss, train_acc"),
    (["--objectives", "test_acc:max"], "'test_acc' names no epoch or trial column (measured after training; no rule "
                                       "can read it)"),
    (["--objectives", "params"], "--objectives: give params a direction, params:max or params:min, got 'params'"),
    (["--objectives", "val_acc:max", "--no-early-stop"],
     "--objectives has nothing to judge: --no-early-stop turns off the stopping rule and the grid searcher does not "
     "read objectives; drop one of them"),
    (["--max-epochs", "3", "--grace-period", "5"], "--grace-period 5 is more than the trials' 3 epochs; give 1 to 3"),
    (["--space", "{file:" + OPTUNA.format(sampler="bayes") + "}"],
     "sampler must be one of tpe, gp, cmaes, nsga2, got 'bayes'"),
    (["--space", "{file:" + OPTUNA.format(sampler="nsga2") + "}"],
     "sampler='nsga2' optimizes several objectives, got one (val_acc:max); give --objectives "
     "val_acc:max,time_per_epoch_s:min, or use tpe"),
    (["--space", "{file:" + OPTUNA.format(sampler="cmaes") + "}", "--objectives", "val_acc:max,params:min"],
     "sampler='cmaes' optimizes one objective, got 2 (val_acc:max, params:min); use tpe, gp or nsga2"),
    (["--resume"], "--resume needs --name RUN: the interrupted run to continue"),
    (["--resume", "--name", "nope"], "no run named 'nope' to resume under {results}/ (runs there: busy, corrupt, done, "
                                     "empty, stateless)"),
    (["--resume", "--name", "done"], "run done is already complete (all trials, finished ?); nothing to resume"),
    (["--resume", "--name", "busy"], "run busy is still running (process {pid}); stop it with Ctrl-C"),
    (["--resume", "--name", "stateless", "--max-epochs", "5"],
     "--max-epochs cannot change on --resume: run stateless was started with --max-epochs None"),
    (["--resume", "--name", "stateless"], "run stateless cannot be resumed: Tune saved no experiment state in "
                                          "{results}/stateless/tune"),
]
READ_MISTAKES = [
    (["summarize", "nope"], "run 'nope' does not exist; runs under {results}/: busy, corrupt, done, empty, stateless"),
    (["report", "nope"], "run 'nope' does not exist"),
    (["summarize", "empty"], "run {results}/empty has no trials in trials.parquet"),
    (["summarize", "{results}/empty"], "run {results}/empty has no trials in trials.parquet"),
    (["report", "{results}/empty"], "run {results}/empty has no trials in trials.parquet"),
    (["summarize", "corrupt"], "cannot read {results}/corrupt/epochs.parquet/part-000000.parquet: Parquet magic "
                               "bytes not found in footer"),
    (["report", "corrupt"], "cannot read {results}/corrupt/epochs.parquet/part-000000.parquet: "),
    (["summarize", "--results", "{tmp}/nothing-here"], "no runs under {tmp}/nothing-here/"),
]


def fill(text: str, results: Path, data_dir: Path, damaged: dict[str, Path], tmp_path: Path, port: int) -> str:
    if text.startswith("{file:"):
        return study_file(tmp_path, text[len("{file:"):-1].replace("\\n", "\n"))
    if text.startswith("{damaged:"):
        return str(damaged[text[len("{damaged:"):-1]])
    return text.format(results=results, data=data_dir, tmp=tmp_path, port=port, pid=os.getpid())


def check_one_error_line(args: list[str], message: str, results: Path) -> None:
    before = snapshot(results)
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no exception escaped
    assert snapshot(results) == before, "a failed command changed the results folder"


def label(args: list[str]) -> str:
    return " ".join(f"<study file {a[6:26]!r}...>" if a.startswith("{file:") else a for a in args)


@pytest.mark.parametrize("args,message", SEARCH_MISTAKES, ids=[label(a) for a, _ in SEARCH_MISTAKES])
def test_a_search_mistake_is_one_error_line_and_changes_nothing(args, message, results, data_dir, damaged, tmp_path):
    port = free_port()
    filled = [fill(a, results, data_dir, damaged, tmp_path, port) for a in args]
    given = dict(zip(filled[::2], filled[1::2])) if "--resume" not in filled else {}
    base = ["--results", str(results), "--name", "new", "--data-dir", str(data_dir), "--max-epochs", "1",
            "--train-size", "100", "--val-size", "100"]
    if "--resume" in filled:
        base = ["--results", str(results), "--data-dir", str(data_dir)]
    for option, value in zip(base[::2], base[1::2]):
        if option not in filled and option not in given:
            filled += [option, value]
    check_one_error_line(["search", *filled], fill(message, results, data_dir, damaged, tmp_path, port), results)


@pytest.mark.parametrize("args,message", READ_MISTAKES, ids=[" ".join(a) for a, _ in READ_MISTAKES])
def test_a_summarize_or_report_mistake_is_one_error_line_and_changes_nothing(args, message, results, tmp_path):
    filled = [a.format(results=results, tmp=tmp_path) for a in args]
    if "--results" not in filled:
        filled += ["--results", str(results)]
    check_one_error_line(filled, message.format(results=results, tmp=tmp_path), results)


def test_resuming_on_an_untested_ray_is_one_error_line(results, data_dir, monkeypatch):
    """Resume restores Tune's saved state through Tune internals (ray_internals.py): on a Ray
    they were not tested with, it refuses instead of silently restarting trials."""
    import ray

    monkeypatch.setattr(ray, "__version__", "2.61.0")
    check_one_error_line(["search", "--resume", "--name", "stateless", "--results", str(results)],
                         "Error: resuming needs Ray 2.60.x: it restores Tune's saved state through Tune internals, "
                         "and this is Ray 2.61.0; install the tested version", results)


def test_the_protected_runs_are_still_readable(results):
    """The snapshot above compares like with like: the runs really are what they claim."""
    assert store.load_run(results / "done").info["status"] == "completed"
    assert json.loads((results / "busy" / store.RUN_FILE).read_text())["pid"] == os.getpid()


PUBLISH_MISTAKES = [
    (["publish-node-types", "{tmp}/no-such.yaml"], "cannot read the cluster config {tmp}/no-such.yaml: [Errno 2]"),
    (["publish-node-types", "{tmp}/plain.yaml"], "{tmp}/plain.yaml is not a Ray cluster config: it has no "
                                                 "available_node_types"),
    (["publish-node-types", "README.md"], "README.md is not valid YAML at line 14: expected '<document start>', "
                                          "but found '<scalar>'"),
    (["publish-node-types", "cluster/local.yaml", "--address", "127.0.0.1:{port}"],
     "no Ray cluster answers at --address 127.0.0.1:{port} (Connection refused)"),
]


@pytest.mark.parametrize("args,message", PUBLISH_MISTAKES, ids=[" ".join(a) for a, _ in PUBLISH_MISTAKES])
def test_publishing_node_types_wrongly_is_one_error_line(args, message, results, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    (tmp_path / "plain.yaml").write_text("a: 1\n")
    port = free_port()
    filled = [a.format(tmp=tmp_path, port=port) for a in args]
    check_one_error_line(filled, message.format(tmp=tmp_path, port=port), results)
