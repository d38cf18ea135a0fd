"""The one-line progress printer, fed fake trials."""

from types import SimpleNamespace

import pandas as pd

from tunefm.tune.progress import ProgressLine


def trial(trial_id, status, **config):
    return SimpleNamespace(trial_id=trial_id, status=status, config=config)


def test_line_counts_done_stopped_failed_running_and_best():
    lines = []
    progress = ProgressLine(total=5, max_epochs=3, echo=lines.append, interval_s=0)
    a = trial("a", "TERMINATED", model="iaro1", lr=0.01, batch_size=8)
    b = trial("b", "TERMINATED", model="iaro2", lr=0.1, batch_size=32)
    c, d, e = trial("c", "ERROR"), trial("d", "RUNNING"), trial("e", "PENDING")
    for t, epochs, acc in [(a, 3, 0.8), (b, 1, 0.5)]:
        for epoch in range(1, epochs + 1):
            progress.on_trial_result(0, [], t, {"epoch": epoch, "val_acc": acc})
    progress.on_trial_complete(0, [], a)
    progress.on_trial_complete(0, [], b)
    progress.on_trial_error(0, [], c)
    progress.on_step_end(0, [a, b, c, d, e])
    assert lines[0].endswith("] 3/5 done (1 stopped early, 1 failed), 1 running | "
                             "best val_acc 0.8000 (iaro1 lr=0.01 batch_size=8)")


def test_a_trial_that_ends_at_its_own_max_epochs_was_not_stopped_early():
    lines = []
    progress = ProgressLine(total=2, max_epochs=4, echo=lines.append, interval_s=0)
    short = trial("s", "TERMINATED", model="kahn", lr=0.1, batch_size=8, max_epochs=2)
    cut = trial("c", "TERMINATED", model="kahn", lr=0.2, batch_size=8, max_epochs=4)
    for t, epochs in [(short, 2), (cut, 3)]:
        for epoch in range(1, epochs + 1):
            progress.on_trial_result(0, [], t, {"epoch": epoch, "val_acc": 0.5})
        progress.on_trial_complete(0, [], t)
    progress.on_experiment_end([short, cut])
    assert "2/2 done (1 stopped early)" in lines[-1]


def test_cpu_fallback_is_warned_once_per_node():
    lines = []
    progress = ProgressLine(total=4, max_epochs=2, echo=lines.append, interval_s=3600)
    fallback = {"gpu_ids": "0", "device": "cpu", "val_acc": 0.5}
    for trial_id, node, epoch in [("a", "10.0.0.1", 1), ("a", "10.0.0.1", 2), ("b", "10.0.0.1", 1),
                                  ("c", "10.0.0.2", 1)]:
        progress.on_trial_result(0, [], trial(trial_id, "RUNNING"),
                                 {**fallback, "node_ip": node, "epoch": epoch})
    progress.on_trial_result(0, [], trial("d", "RUNNING"),  # on CUDA, or given no GPU: nothing to say
                             {"gpu_ids": "0", "device": "cuda", "node_ip": "10.0.0.3", "epoch": 1})
    progress.on_trial_result(0, [], trial("e", "RUNNING"),
                             {"gpu_ids": "", "device": "cpu", "node_ip": "10.0.0.4", "epoch": 1})
    assert lines == [
        "Warning: Ray gave trial a GPU 0 on node 10.0.0.1, but CUDA is not available there; "
        "its trials on that node train on CPU",
        "Warning: Ray gave trial c GPU 0 on node 10.0.0.2, but CUDA is not available there; "
        "its trials on that node train on CPU",
    ]


def test_an_interrupted_search_ends_without_a_final_line_whatever_tune_says():
    """Tune marks the trials it stops on Ctrl-C TERMINATED; they are not done."""
    lines = []
    progress = ProgressLine(total=3, max_epochs=3, echo=lines.append, interval_s=3600)
    a, b = trial("a", "RUNNING", model="iaro1"), trial("b", "PENDING", model="iaro1")
    progress.on_trial_result(0, [], a, {"epoch": 1, "val_acc": 0.5})
    a.status = b.status = "TERMINATED"
    progress.on_experiment_end([a, b])
    assert lines == []
    progress.on_step_end(0, [a, b])
    assert "0/3 done (0 stopped early), 0 running" in lines[0]


def test_a_resumed_search_counts_what_was_done_before():
    earlier = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["TERMINATED", "ERROR", "INTERRUPTED"],
                            "epochs": [1, 2, 1], "best_val_acc": [0.6, 0.7, 0.65],
                            "model": ["iaro1", "iaro2", "iaro3"], "lr": [0.1, 0.01, 0.05], "batch_size": [8, 16, 32]})
    lines = []
    progress = ProgressLine(total=4, max_epochs=3, echo=lines.append, interval_s=0, earlier=earlier)
    c = trial("c", "RUNNING", model="iaro3")
    progress.on_trial_result(0, [], c, {"epoch": 2, "val_acc": 0.66})
    progress.on_step_end(0, [trial("a", "TERMINATED"), trial("b", "ERROR"), c, trial("d", "PENDING")])
    assert lines[0].endswith("2/4 done (1 stopped early, 1 failed), 1 running | "
                             "best val_acc 0.7000 (iaro2 lr=0.01 batch_size=16)")


def test_a_retried_trial_is_one_warning_with_its_error(tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("Failure # 1 (occurred at 2026-11-22_10-00-00)\n"
                          "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
                          "\tclass_name: ImplicitFunc\n")
    lines = []
    progress = ProgressLine(total=1, max_epochs=3, echo=lines.append, max_failures=2)
    failed = SimpleNamespace(trial_id="a", status="RUNNING", config={"model": "iaro1", "lr": 0.01, "batch_size": 8},
                             num_failures=1, error_file=str(error_file))
    progress.on_trial_recover(0, [], failed)
    assert lines == ["Warning: trial a (iaro1 lr=0.01 batch_size=8) failed: ray.exceptions.ActorDiedError: The actor "
                     "died unexpectedly before finishing this task.; retrying from its last checkpoint (retry 1 of 2)"]
