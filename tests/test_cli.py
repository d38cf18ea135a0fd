"""The click CLI in-process: help text, a real search, and exact one-line errors."""

import re

import click
import pandas as pd
import pytest
from click.testing import CliRunner
from local_cluster import free_port

from tunefm.cli import main
from tunefm.run import store


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_command_and_option_is_documented():
    ctx = click.Context(main, **main.context_settings)
    for name, command in main.commands.items():
        assert command.help, f"{name} has no help text"
        sub = click.Context(command, parent=ctx, info_name=name)
        for param in command.params:
            if isinstance(param, click.Argument):
                assert param.name.upper() in command.help, f"{name}: help does not explain {param.name.upper()}"
                continue
            help_text = param.get_help_record(sub)[1]
            assert "default" in help_text, f"{name} {param.opts}: help does not state its default"


def test_search_with_set_runs_the_narrowed_grid(ray_session, tmp_path, data_dir):
    result = invoke("search", "--space", "fourfam", "--set", "model=iaro1", "--set", "lr=0.01",
                    "--max-epochs", "1", "--train-size", "300", "--val-size", "200", "--concurrency", "1",
                    "--data-dir", str(data_dir), "--results", str(tmp_path), "--name", "q")
    assert result.exit_code == 0, result.output
    trials = store.read_trials(tmp_path / "q")
    assert len(trials) == 7 and set(trials.lr) == {0.01} and set(trials.model) == {"iaro1"}
    assert sorted(trials.batch_size) == [8, 16, 32, 64, 128, 256, 512]
    assert "Running 7 trials of study 'fourfam'" in result.output
    best = trials.loc[trials.best_val_acc.idxmax()]
    assert re.search(rf"^iaro1 +21\.4k +{best.best_val_acc:.4f} +{best.test_acc:.4f} +0\.01 +{best.batch_size} ",
                     result.output, re.M), result.output
    assert trials.test_acc.notna().sum() == 3  # the top 3 configurations of the one model
    assert "Test set: 3 trial(s) evaluated in" in result.output
    assert "7 trials, 0 stopped early by ASHA, 7 epochs trained." in result.output
    assert f"Results: {tmp_path / 'q'}" in result.output


@pytest.mark.parametrize("args,message", [
    (["--space", "nope"], "unknown study 'nope'; valid studies: cnn2-tpe, cnn5, fourfam, kernels, ladder, optim, "
                          "regularize (or a path to a .py file that defines STUDY)"),
    (["--set", "colour=red"], "unknown config key 'colour' in --set; valid keys: model, lr, batch_size, "
                              "optimizer, momentum, weight_decay, init, augment, output, lr_decay, max_epochs, seed; "
                              "model options: dropout, hidden, batch_norm, conv1_kernel, conv1_filters, conv2_kernel, "
                              "conv2_filters, dense"),
    (["--set", "dropout=0.5"], "model iaro1 does not take 'dropout'; it takes no options"),
    (["--set", "augment=maybe"], "augment must be true or false, got augment='maybe'"),
    (["--space", "kernels", "--set", "conv1_kernel=4"],
     "conv1_kernel must be an odd integer >= 1 for model twoconv, got conv1_kernel=4"),
    (["--space", "cnn2-tpe", "--set", "lr=-1"], "lr must be a number > 0, got lr=-1"),
    (["--space", "kernels", "--set", "conv1_kernel=15", "--set", "conv2_kernel=15"],
     "model twoconv: conv1_kernel + conv2_kernel must be <= 29 (two unpadded convolutions of a 28x28 image), got 15 + 15 = 30"),
    (["--set", "init=orthogonal"], "init must be one of 'default', 'xavier_uniform', 'xavier_normal', "
                                   "'kaiming_uniform', got init='orthogonal'"),
    (["--set", "model=resnet"], "unknown model 'resnet'; valid models: iaro1, iaro2, iaro3, iaro4, cnn1, cnn2, cnn3, "
                                "cnn4, cnn5, logreg, ann1, ann2, ann3, convnet1, convnet2, convnet3, vgg16, kahn, twoconv"),
    (["--set", "optimizer=rmsprop"], "optimizer must be 'sgd' or 'adam', got optimizer='rmsprop'"),
    (["--set", "lr=0"], "lr must be a number > 0, got lr=0"),
    (["--set", "batch_size=0"], "batch_size must be an integer >= 1, got batch_size=0"),
    (["--max-epochs", "0"], "--max-epochs must be >= 1, got 0"),
    (["--train-size", "-5"], "--train-size must be between 1 and 50000 (60,000 training images minus "
                             "--val-size 10000), got -5"),
    (["--train-size", "70000"], "--train-size must be between 1 and 50000 (60,000 training images minus "
                                "--val-size 10000), got 70000"),
    (["--reduction-factor", "1"], "--reduction-factor must be >= 2, got 1"),
    (["--test-top", "-1"], "--test-top must be >= 0, got -1"),
    (["--data-dir", "/nonexistent/fm"], "data folder /nonexistent/fm does not exist; give --data-dir or "
                                        "TUNEFM_DATA_DIR a folder holding the Fashion-MNIST IDX files"),
])
def test_bad_input_is_one_error_line(tmp_path, data_dir, args, message):
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(data_dir)]
    result = invoke("search", "--results", str(tmp_path / "results"), *args)
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert not (tmp_path / "results").exists()  # nothing written


def test_existing_run_name_is_refused_and_untouched(tmp_path, data_dir):
    run_dir = tmp_path / "q"
    run_dir.mkdir()
    pd.DataFrame({"trial_id": ["x"]}).to_parquet(run_dir / "trials.parquet")
    result = invoke("search", "--results", str(tmp_path), "--name", "q", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert result.output == f"Error: run {run_dir} already exists; choose another --name, or add --resume to continue it\n"
    assert pd.read_parquet(run_dir / "trials.parquet").trial_id.tolist() == ["x"]


def test_results_path_that_is_a_file(tmp_path, data_dir):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    result = invoke("search", "--results", str(blocker), "--name", "q", "--data-dir", str(data_dir),
                    "--set", "model=iaro1", "--max-epochs", "1", "--train-size", "100", "--val-size", "100")
    assert result.exit_code == 1
    assert result.output == f"Error: cannot create run folder {blocker / 'q'}: {blocker} is not a folder\n"
    assert blocker.read_text() == "not a folder"


def test_address_with_nothing_listening_fails_fast(tmp_path, data_dir):
    port = free_port()  # free a moment ago: nothing listens there
    result = invoke("search", "--address", f"127.0.0.1:{port}", "--results", str(tmp_path),
                    "--data-dir", str(data_dir), "--train-size", "100", "--val-size", "100")
    assert result.exit_code == 1
    assert result.output == (f"Error: no Ray cluster answers at --address 127.0.0.1:{port} (Connection refused); "
                             "start one with `ray start --head` or give its head node's address\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unsatisfiable_resources_without_ray_running_print_only_the_error(tmp_path, data_dir):
    """A fresh process, as a user runs it: refused before a local Ray starts, so no Ray logs."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tunefm.cli", "search", "--cpus-per-trial", "10000", "--results", str(tmp_path),
         "--data-dir", str(data_dir), "--train-size", "100", "--val-size", "100"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert re.fullmatch(r"Error: --cpus-per-trial 10000 can never be met: the largest node has \d+ CPU\n",
                        result.stderr), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback():
    result = CliRunner().invoke(main, ["--debug", "search", "--space", "nope"])
    assert result.exit_code == 1 and "UserError" in repr(result.exception)


@pytest.mark.parametrize("args, message", [
    (["evaluate"], "Error: Missing argument 'RUN'."),
    (["search", "--max-epochs", "abc"], "Error: Invalid value for '--max-epochs': 'abc' is not a valid integer."),
    (["summarize", "--section", "nope"], "Error: Invalid value for '--section': 'nope' is not one of 'best', "
                                         "'reference', 'grid', 'importance', 'pareto', 'overfit', 'confusion'."),
    (["summarize", "--format", "xml"], "Error: Invalid value for '--format': 'xml' is not one of 'table', "
                                       "'markdown', 'csv', 'json'."),
    (["report", "--cost", "watts"], "Error: Invalid value for '--cost': 'watts' is not one of 'total_time_s', "
                                    "'time_per_epoch_s', 'time_to_90_train_acc_s', 'params', 'gpu_seconds'."),
    (["bogus"], "Error: No such command 'bogus'."),
    (["--bogus"], "Error: No such option '--bogus'."),
])
def test_usage_mistakes_are_one_error_line_too(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output == message + "\n"


def test_no_arguments_still_show_the_help():
    result = CliRunner().invoke(main, [])
    assert "Commands:" in result.output and "summarize" in result.output


def test_models_lists_every_model_with_its_count_and_seed():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    from tunefm.engine import models

    for name in models.names():
        spec = models.get(name)
        row = next(line for line in lines if line.split()[:1] == [name])
        assert f"{spec.params:,}" in row and spec.source[:3] in row
    assert "twoconv: conv k1xk1xf1" in result.output and "conv1_kernel=3" in result.output


def test_spaces_lists_every_study_and_shows_one_in_full():
    result = CliRunner().invoke(main, ["spaces"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:8]}
    assert rows["kernels"][1:5] == ["004", "72", "10", "grid"]
    assert rows["cnn2-tpe"][1:5] == ["001", "30", "10", "hyperopt"]
    assert rows["fourfam"][1:5] == ["000", "112", "100", "grid"]
    full = CliRunner().invoke(main, ["spaces", "cnn2-tpe"])
    assert full.exit_code == 0
    for text in ("source: 001_b3a5012d14491ce7.txt; searcher: hyperopt; trials: 30",
                 "lr             loguniform(1e-05, 0.01)", "batch_size     choice([32, 64, 128, 256])",
                 "first point    lr=0.0003593, weight_decay=0.0003593, batch_size=64",
                 "model=cnn2: test_acc 0.9291; chose lr=0.0003593"):
        assert text in full.output
    missing = CliRunner().invoke(main, ["spaces", "nope"])
    assert missing.exit_code == 1 and missing.output.startswith("Error: unknown study 'nope'; valid studies: cnn2-tpe")
