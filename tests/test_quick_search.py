"""The README's quick search (`tunefm search --space fourfam --max-epochs 3 --train-size 3000
--val-size 1000`: 112 trials, ASHA, the test evaluation) and every test that reads it: the grid
and the stops, the importance ranking, the checkpoints kept, and a search stopped by Ctrl-C
and resumed that must train the same numbers.

The search runs once per test session, as a user runs it, in the background from the start
(conftest.py); these tests run once the modules with the longest tests have run, the longest
of them first, each on whichever worker is free (they share nothing else).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pyarrow.fs as pafs
from click.testing import CliRunner
from conftest import QUICK_FOURFAM, linked_copy
from local_cluster import fresh_ray_env
from test_importance import assert_matches_statsmodels
from test_resume import CONFIG_KEYS, config_rows, group_is_gone, start_tunefm, wait_for_finished_trials
from test_retention import on_disk

from tunefm.cli import main
from tunefm.run import checkpoints, ranking, store

BATCHES = [32, 64, 128, 256, 512]
LRS = [0.01, 0.001]


def test_ctrl_c_then_resume_gives_the_uninterrupted_runs_trials(quick_fourfam, tmp_path, data_dir):
    """The README's quick search on its two smaller models, two learning rates and batch sizes
    32-512 (`--set model=iaro1,iaro2 --set lr=0.01,0.001 --set batch_size=32,64,128,256,512`:
    20 trials, a tenth of its compute), stopped by Ctrl-C (SIGINT to its whole process group)
    after 8 trials and resumed with the command it printed: the same 20 configurations as the
    uninterrupted quick search has of those, every epoch once, and the same numbers for every
    (config, epoch) both ran (a trial's numbers depend on its config alone, not on which
    other trials share the search, nor on what was calibrated in between: issue 43)."""
    env = {**fresh_ray_env(tmp_path), "TUNEFM_DATA_DIR": str(data_dir)}
    results = tmp_path / "results"
    args = ["search", *QUICK_FOURFAM, "--set", "model=iaro1,iaro2", "--set", f"lr={','.join(map(str, LRS))}",
            "--set", f"batch_size={','.join(map(str, BATCHES))}",
            "--results", str(results), "--name", "q"]
    process = start_tunefm(env, *args)
    run_dir = results / "q"
    wait_for_finished_trials(run_dir, 8, process)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)

    assert process.returncode == 130, err
    resume_line = f"Resume with: tunefm search --name q --resume --results {results}"
    assert err.splitlines()[-1] == resume_line and "Traceback" not in err
    assert err.splitlines()[-2].startswith("Interrupted by SIGINT: ")
    assert group_is_gone(process.pid)
    info = store.read_json(run_dir / store.RUN_FILE)
    assert info["status"] == "interrupted"
    assert [e["event"] for e in info["events"]] == ["started", "interrupted"]
    assert info["events"][1]["signal"] == "SIGINT"
    before = store.read_trials(run_dir)
    statuses = before.status.value_counts().to_dict()
    assert statuses.get("TERMINATED", 0) >= 8
    assert statuses.get("INTERRUPTED", 0) >= 1 and statuses.get("PENDING", 0) >= 1
    assert f"{statuses['TERMINATED']} of 20 trials finished, {statuses['INTERRUPTED']} stopped at their last " \
           f"checkpoint" in err
    epochs_before = store.read_epochs(run_dir)
    assert not epochs_before.duplicated(["trial_id", "epoch"]).any()
    finished_before = before[before.status == "TERMINATED"].trial_id
    interrupted = before[before.status == "INTERRUPTED"].set_index("trial_id").epochs
    # where each continues: its newest whole checkpoint up to the last epoch the run recorded,
    # whether or not Tune's saved state names it (Tune saves it before the trials stop); 0: from the start
    newest = {trial_id: max((c.epoch for c in checkpoints.listing(pafs.LocalFileSystem(),
                                                                   str(run_dir / store.TUNE_DIR / trial_id))
                             if c.complete and c.epoch <= recorded), default=0)
              for trial_id, recorded in interrupted.items()}

    resumed = subprocess.run([sys.executable, "-c", "from tunefm.cli import main; main()",
                              *resume_line.removeprefix("Resume with: tunefm ").split()],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming run q: {statuses['TERMINATED']} of 20 trials finished before" in resumed.stdout

    trials, epochs = store.read_trials(run_dir), store.read_epochs(run_dir)
    reference, reference_epochs = store.read_trials(quick_fourfam), store.read_epochs(quick_fourfam)
    ours = lambda t: t.model.isin(["iaro1", "iaro2"]) & t.lr.isin(LRS) & t.batch_size.isin(BATCHES)  # noqa: E731
    reference, reference_epochs = reference[ours(reference)], reference_epochs[ours(reference_epochs)]
    assert len(trials) == 20 and set(trials.status) == {"TERMINATED"}
    configs = lambda t: set(map(tuple, t[CONFIG_KEYS].astype(str).values))  # noqa: E731
    assert configs(trials) == configs(reference)
    # no epoch row duplicated or lost: each trial's rows are 1..epochs, and they add up
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == trials.epochs.sum()
    for _, rows in epochs.groupby("trial_id"):
        assert sorted(rows.epoch) == list(range(1, len(rows) + 1))
    # the trials finished before Ctrl-C were not run again: their rows are untouched
    kept = epochs_before[epochs_before.trial_id.isin(finished_before)].sort_values(["trial_id", "epoch"])
    now = epochs[epochs.trial_id.isin(finished_before)].sort_values(["trial_id", "epoch"])
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), now.reset_index(drop=True))
    # the interrupted ones continued from their last checkpointed epoch and trained no epoch
    # twice (Tune's own record of each trial's results, result.json, kept across the restore), and
    # every number matches the uninterrupted run's wherever both trained the same config to the same
    # epoch. Tune restores result.json from the copy its last experiment save synced, and it saves
    # before its trials stop: the epochs reported last before Ctrl-C may be missing from it, never doubled.
    for trial_id, epoch in newest.items():
        reported = [json.loads(line) for line in (run_dir / store.TUNE_DIR / trial_id / "result.json").read_text()
                    .splitlines()]
        order = [r["epoch"] for r in reported]
        last = trials.set_index("trial_id").epochs[trial_id]  # a trial interrupted after its last epoch has none to add
        assert order == sorted(set(order)), (trial_id, order)  # each epoch once: none trained twice
        before_ctrl_c = [e for e in order if e <= epoch]
        assert before_ctrl_c == list(range(1, len(before_ctrl_c) + 1)), (trial_id, order)  # the synced prefix
        assert [e for e in order if e > epoch] == list(range(epoch + 1, last + 1)), (trial_id, epoch, order)
        restarts = [r["epoch"] for r in reported if r["iterations_since_restore"] == 1]
        if 0 < epoch < last:  # continued from its newest checkpoint, not from the start
            assert epoch + 1 in restarts and set(restarts) <= {1, epoch + 1}, (trial_id, epoch, restarts)
        else:
            assert set(restarts) <= {1}, (trial_id, epoch, restarts)
    mine, theirs = config_rows(epochs), config_rows(reference_epochs)
    both = mine.index.intersection(theirs.index)
    assert len(both) >= 0.8 * len(theirs)
    pd.testing.assert_frame_equal(mine.loc[both], theirs.loc[both], rtol=0, atol=1e-6)

    info = store.read_json(run_dir / store.RUN_FILE)
    assert info["status"] == "completed"
    assert [e["event"] for e in info["events"]] == ["started", "interrupted", "resumed", "completed"]
    assert trials.test_acc.notna().sum() >= 6  # the winners (3 per model) were evaluated after the resume

    again = subprocess.run([sys.executable, "-c", "from tunefm.cli import main; main()",
                            *resume_line.removeprefix("Resume with: tunefm ").split()],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("Error: run q is already complete (20 trials, finished ")


def test_quick_fourfam_search_runs_the_full_grid_with_asha(quick_fourfam):
    """The README's quick search: every trial and epoch, ASHA stopping, test evaluation."""
    trials, epochs = store.read_trials(quick_fourfam), store.read_epochs(quick_fourfam)
    assert len(trials) == 112
    assert trials.groupby("model").size().to_dict() == {f"iaro{i}": 28 for i in range(1, 5)}
    assert (trials.stopped_early & (trials.epochs < 3)).sum() >= 56  # ASHA stopped at least half
    assert len(epochs) == trials.epochs.sum() and not epochs.duplicated(["trial_id", "epoch"]).any()
    # The search's own test evaluation: each model's top 3 configurations, on all 10,000 test images.
    evaluated = trials[trials.test_acc.notna()]
    assert sorted(evaluated.trial_id) == ranking.top_configs(trials, 3) and len(evaluated) == 12
    confusion = pd.read_parquet(quick_fourfam / store.CONFUSION_FILE)
    assert set(confusion.trial_id) == set(evaluated.trial_id) and (confusion.groupby("trial_id")["count"].sum()
                                                                   == 10_000).all()
    info = store.read_json(quick_fourfam / store.RUN_FILE)
    assert info["evaluation"]["trials"] == sorted(evaluated.trial_id) and info["status"] == "completed"


def test_the_quick_search_ranks_lr_and_batch_size(quick_fourfam):
    """The README's quick search (fourfam, 112 trials): an exact ANOVA over model x lr x batch size."""
    rows = assert_matches_statsmodels(quick_fourfam)
    assert set(rows.index) == {"model", "lr", "batch_size", "lr x batch_size", "residual (other interactions)"}
    assert rows.loc["lr", "share"] > 0.1 and rows.loc["batch_size", "share"] > 0.1
    assert rows.loc["lr", "p"] < 1e-6 and rows.loc["batch_size", "p"] < 1e-6


def test_the_quick_search_keeps_only_the_best_checkpoint_of_each_models_top_configurations(quick_fourfam):
    trials = store.read_trials(quick_fourfam)
    info = store.read_json(quick_fourfam / store.RUN_FILE)
    kept = ranking.top_configs(trials, checkpoints.KEEP_TOP)
    assert info["checkpoints"]["policy"] == "best" and info["checkpoints"]["keep_top"] == checkpoints.KEEP_TOP
    assert info["checkpoints"]["kept_trials"] == kept and len(kept) == 4 * checkpoints.KEEP_TOP
    tune_dir = quick_fourfam / store.TUNE_DIR
    for trial in trials.itertuples():
        found = on_disk(tune_dir, trial.trial_id)
        if trial.trial_id in kept:
            assert list(found) == [trial.best_epoch], trial.trial_id  # the best only, not the latest
        else:
            assert found == {}, trial.trial_id
    kept_bytes = sum(sum(on_disk(tune_dir, t).values()) for t in kept)
    assert info["checkpoints"]["kept_mb"] == round(kept_bytes / 2**20, 1)
    assert info["checkpoints"]["freed_mb"] > info["checkpoints"]["kept_mb"]


def test_evaluate_says_which_checkpoints_the_policy_deleted(quick_fourfam, tmp_path):
    run_dir = linked_copy(quick_fourfam, tmp_path / "copy")
    before = sorted(p.name for p in (run_dir / store.TRIALS_FILE).iterdir())
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--test-top", str(checkpoints.KEEP_TOP + 1)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: trial ")
    assert lines[0].endswith("'s checkpoints were deleted after the search: --keep-checkpoints best keeps only "
                             "each model's top 5 configuration(s); evaluate with --test-top 5 or less, or run the "
                             "search with --keep-checkpoints all")
    assert sorted(p.name for p in (run_dir / store.TRIALS_FILE).iterdir()) == before
    again = CliRunner().invoke(main, ["evaluate", str(run_dir), "--test-top", str(checkpoints.KEEP_TOP)])
    assert again.exit_code == 0, again.output  # the kept ones are enough for --test-top 5
