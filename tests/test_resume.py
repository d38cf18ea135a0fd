"""Interrupting a search (SIGINT, SIGTERM, SIGKILL) and resuming it, through the real `tunefm`
command in its own process, as a user runs it; and ASHA's state across a resume. (Ctrl-C and a
resume that must train the numbers of the uninterrupted quick search: test_quick_search.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from local_cluster import fresh_ray_env

from tunefm.run import store
from tunefm.tune import ray_internals, resume, search
from tunefm.tune.settings import SearchSettings

CONFIG_KEYS = ["model", "lr", "batch_size", "seed"]
METRICS = ["train_loss", "train_acc", "val_loss", "val_acc"]


def start_tunefm(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`tunefm ...` in a new session: its process group is what a terminal's Ctrl-C reaches."""
    return subprocess.Popen([sys.executable, "-c", "from tunefm.cli import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def assert_only_tunefms_lines(*outputs: str) -> None:
    """The terminal is tunefm's: no Ray worker output (a checkpoint line per trial and epoch,
    `(... pid=...)` prefixes), no raylet warnings, no Python shutdown noise."""
    for text in outputs:
        for noise in ("(raylet)", "Checkpoint successfully created", " pid=", "Exception ignored in",
                      "terminate called"):
            assert noise not in text, f"{noise!r} in the output:\n{text[-3000:]}"


def wait_for_finished_trials(run_dir: Path, count: int, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if store.has_results(run_dir):
            if (store.read_trials(run_dir).status == "TERMINATED").sum() >= count:
                return
        time.sleep(0.5)
    raise AssertionError(f"{count} trials did not finish in time: {process.poll()=}")


def wait_for_epochs(run_dir: Path, count: int, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until the run's Parquet holds `count` (trial, epoch) rows."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if store.has_results(run_dir) and len(store.read_epochs(run_dir)) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{count} epochs were not written in time: {process.poll()=}")


def group_is_gone(pgid: int, timeout_s: float = 30) -> bool:
    """No process of the interrupted command's group (the driver, its Ray) is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def config_rows(epochs: pd.DataFrame) -> pd.DataFrame:
    return epochs.set_index(CONFIG_KEYS + ["epoch"])[METRICS].sort_index()


def restored_from_checkpoint(tune_dir: Path, trial_id: str) -> bool:
    """Tune's own record of the trial shows a restart in the middle: a result that was the first
    since a restore (iterations_since_restore 1) but not the trial's first epoch."""
    results = [json.loads(line) for line in (tune_dir / trial_id / "result.json").read_text().splitlines()]
    return any(r["iterations_since_restore"] == 1 and r["epoch"] > 1 for r in results)


def start_small_search(tmp_path: Path, data_dir: Path, name: str) -> tuple[dict, Path, list[str], subprocess.Popen]:
    """16 of fourfam's iaro1 trials (4 lr x batch sizes 32-256), 2 epochs each, started; returns
    once 4 have finished."""
    env = {**fresh_ray_env(tmp_path), "TUNEFM_DATA_DIR": str(data_dir)}
    results = tmp_path / "results"
    # --fuse off: whether fusing pays depends on this machine's calibration; resuming a fused
    # search has its own test (test_fused_search.py).
    args = ["search", "--space", "fourfam", "--set", "model=iaro1", "--set", "batch_size=32,64,128,256",
            "--max-epochs", "2", "--train-size", "3000",
            "--val-size", "500", "--test-top", "0", "--fuse", "off", "--results", str(results), "--name", name]
    process = start_tunefm(env, *args)
    wait_for_finished_trials(results / name, 4, process)
    return env, results, args, process


def wait_for_a_running_trial_with_a_checkpoint(run_dir: Path, process: subprocess.Popen,
                                               timeout_s: float = 120) -> None:
    """Until a trial that has not finished has a checkpoint (for the repair below to act on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        finished = set(store.read_trials(run_dir).query("status == 'TERMINATED'").trial_id)
        if any(c.parent.name not in finished for c in (run_dir / store.TUNE_DIR).glob("*/checkpoint_*")):
            return
        time.sleep(0.1)
    raise AssertionError("no running trial checkpointed in time")


@pytest.mark.slow
def test_a_killed_search_resumes_and_a_resume_stopped_by_sigterm_resumes_again(tmp_path, data_dir):
    """SIGKILL to the search process (nothing flushed or recorded; run.json still says running),
    then its resume stopped by SIGTERM (`kill PID`, to the driver alone, as a batch system sends
    it) once a trial it runs has a checkpoint, then the same resume command again: the run
    completes with every epoch once, and run.json tells the whole story."""
    env, results, args, process = start_small_search(tmp_path, data_dir, "k")
    deadline = time.monotonic() + 120
    while not list((results / "k" / store.TUNE_DIR).glob("experiment_state-*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until Tune has saved its state once
    process.kill()
    process.communicate(timeout=60)
    os.killpg(process.pid, signal.SIGKILL)  # Ray's agents outlive a SIGKILLed driver; they are ours to end
    assert group_is_gone(process.pid)
    assert store.read_json(results / "k" / store.RUN_FILE)["status"] == "running"
    # Trials the killed run finished after Tune's last save are not finished for Tune: the
    # resume trains them again from their checkpoints, so progress is counted in epochs.
    epochs_before = len(store.read_epochs(results / "k"))

    resume_args = ["search", "--name", "k", "--resume", "--results", str(results)]
    resuming = start_tunefm(env, *resume_args)
    wait_for_epochs(results / "k", epochs_before + 2, resuming)  # the resume trains
    wait_for_a_running_trial_with_a_checkpoint(results / "k", resuming)
    resuming.send_signal(signal.SIGTERM)
    out, err = resuming.communicate(timeout=120)
    assert resuming.returncode == 143, err
    assert err.splitlines()[-2].startswith("Interrupted by SIGTERM: ") and "Traceback" not in err
    assert group_is_gone(resuming.pid)
    info = store.read_json(results / "k" / store.RUN_FILE)
    assert info["status"] == "interrupted" and info["events"][-1]["signal"] == "SIGTERM"
    assert len(store.read_epochs(results / "k")) > epochs_before
    assert (store.read_trials(results / "k").status == "TERMINATED").sum() < 16  # stopped before the end

    # The race a SIGKILL can hit: Tune deleted the checkpoint its saved state names, a newer
    # one exists. Made here on purpose for one trial the saved state names a checkpoint of
    # (a trial that checkpointed after the state's last save is not named); the resume puts it back.
    tune_dir = results / "k" / store.TUNE_DIR
    # (A trial that checkpointed just before the signal may also have finished before it: then
    # no interrupted trial has a checkpoint, and there is nothing to take away.)
    named = [Path(p) for p in sorted(ray_internals.named_checkpoints(str(tune_dir), unfinished_only=True))]
    if named:
        trial_dir = named[0].parent
        named[0].rename(trial_dir / "checkpoint_000099")
        assert resume.restore_missing_checkpoints(str(tune_dir)) == [str(named[0])]
        assert named[0].is_dir() and not (trial_dir / "checkpoint_000099").exists()
    # The state is older than the trial's end, and the trial kept only its best, older checkpoint:
    # a copy of that goes where the state points (the best stays where evaluation finds it).
    if named:
        for other in trial_dir.glob("checkpoint_*"):
            if other != named[0]:
                shutil.rmtree(other)
        named[0].rename(trial_dir / "checkpoint_-best")  # sorts before every numbered one
        assert resume.restore_missing_checkpoints(str(tune_dir)) == [str(named[0])]
        assert (named[0] / "state.pt").read_bytes() == (trial_dir / "checkpoint_-best" / "state.pt").read_bytes()
    assert resume.restore_missing_checkpoints(str(tune_dir)) == []  # nothing else is missing

    resumed = subprocess.run([sys.executable, "-c", "from tunefm.cli import main; main()", *resume_args],
                             env=env, capture_output=True, text=True, timeout=300)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials, epochs = store.read_trials(results / "k"), store.read_epochs(results / "k")
    assert len(trials) == 16 and set(trials.status) == {"TERMINATED"}
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == trials.epochs.sum()
    events = store.read_json(results / "k" / store.RUN_FILE)["events"]
    assert [e["event"] for e in events] == ["started", "lost", "resumed", "interrupted", "resumed", "completed"]
    assert events[1]["note"] == f"search process {process.pid} ended without recording why (killed?)"
    assert_only_tunefms_lines(out, err, resumed.stdout, resumed.stderr)


def test_asha_after_a_resume_holds_the_rungs_it_held_before():
    """Tune does not save the scheduler: a resumed search replays the written epochs into ASHA,
    which then judges a new trial exactly as the uninterrupted one would."""
    settings = SearchSettings(grace_period=1, reduction_factor=3)
    study = SimpleNamespace(max_epochs=9)
    live = search.make_scheduler(study, settings)
    rows = []
    for i, accuracy in enumerate([0.5, 0.6, 0.7, 0.8, 0.55, 0.65]):
        trial = SimpleNamespace(trial_id=f"t{i}")
        live.on_trial_add(None, trial)
        for epoch in (1, 2, 3):
            live.on_trial_result(None, trial, {"epoch": epoch, "val_acc": accuracy + epoch / 100})
            rows.append({"trial_id": trial.trial_id, "epoch": epoch, "val_acc": accuracy + epoch / 100})
    resumed = search.make_scheduler(study, settings, pd.DataFrame(rows).sample(frac=1, random_state=0))
    fresh = search.make_scheduler(study, settings)
    decisions = {}
    for name, scheduler in [("live", live), ("resumed", resumed), ("fresh", fresh)]:
        newcomer = SimpleNamespace(trial_id="new")
        scheduler.on_trial_add(None, newcomer)
        decisions[name] = [scheduler.on_trial_result(None, newcomer, {"epoch": e, "val_acc": 0.62}) for e in (1,)]
    assert decisions["resumed"] == decisions["live"] == ["STOP"]
    assert decisions["fresh"] == ["CONTINUE"]  # what a resume without the replay would do


def test_an_interrupted_search_resumes_in_the_same_process(ray_session, tmp_path, data_dir):
    """The fast tier's resume, in-process on the session's Ray: SIGINT after the first of three
    trials (one at a time), then `resume.run` with nothing given, from checkpoints saved as a
    GPU saves them; every trial ends with all its epochs, once each, and run.json tells the story."""
    import threading

    from test_gpu_path import retag_checkpoints_as_cuda

    from tunefm.errors import Interrupted
    from tunefm.run.record import RunRecord

    settings = SearchSettings(space="fourfam", sets=("model=iaro1", "batch_size=64", "lr=0.01,0.02,0.03"),
                                     max_epochs=2, train_size=256, val_size=128, test_size=64, test_top=1,
                                     concurrency=1, early_stop=False, fuse="off", name="r",
                                     results_dir=str(tmp_path), data_dir=str(data_dir))
    run_dir = tmp_path / "r"

    def interrupt_after_the_first_trial():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # never a SIGINT outside the search: it would stop pytest
            if store.has_results(run_dir) and (store.read_trials(run_dir).status == "TERMINATED").any():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.1)

    threading.Thread(target=interrupt_after_the_first_trial, daemon=True).start()
    with pytest.raises(Interrupted) as stopped:
        search.run(settings, echo=lambda line: None)
    assert stopped.value.signal_name == "SIGINT"
    assert stopped.value.resume == f"tunefm search --name r --resume --results {tmp_path}"
    assert RunRecord.load(run_dir).status == "interrupted"
    finished_before = int((store.read_trials(run_dir).status == "TERMINATED").sum())
    assert 1 <= finished_before < 3
    # As if a GPU had written them: the resumed trials and the test evaluation read them on this CPU.
    assert retag_checkpoints_as_cuda(run_dir) >= 1

    lines = []
    outcome = resume.run(SearchSettings(name="r", results_dir=str(tmp_path)), echo=lines.append)
    assert f"Resuming run r: {finished_before} of 3 trials finished before" in lines
    trials, epochs = outcome.trials, store.read_epochs(run_dir)
    assert len(trials) == 3 and (trials.status == "TERMINATED").all() and (trials.epochs == 2).all()
    assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    record = RunRecord.load(run_dir)
    assert [e["event"] for e in record.events] == ["started", "interrupted", "resumed", "completed"]
    assert record.status == "completed" and record.options["train_size"] == 256 and record.evaluation["top_k"] == 1
