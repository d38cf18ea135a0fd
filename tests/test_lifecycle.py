"""A run's life (tunefm/tune/lifecycle.py, tunefm/run/record.py): run.json's schema and transitions, the Ray session that
always shuts down what it started, and that nothing else starts Ray or writes run.json.

The whole life of real runs (started, interrupted, resumed, failed, completed, evaluated)
is exercised by test_search.py, test_resume.py and test_evaluate.py; these tests pin the
record itself, fast and without a search.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from tunefm.errors import UserError
from tunefm.run import store
from tunefm.run.record import RunRecord
from tunefm.tune import lifecycle
from tunefm.tune.settings import SearchSettings

TUNEFM = Path(lifecycle.__file__).resolve().parent
REPO = TUNEFM.parent


def started_record(tmp_path) -> RunRecord:
    """A record as `RunRecord.started` makes it, from hand-made study, data and session."""
    from tunefm import study
    from tunefm.tune import placement

    loaded = study.load("regularize")
    data = {"source": str(tmp_path), "sizes": {"train": 10, "val": 5, "test": 5},
            "sha256": {"train-images-idx3-ubyte.gz": "ab" * 32}}
    session = {"dashboard_url": "http://127.0.0.1:8265", "nodes": 1, "ray_address": "127.0.0.1:6379"}
    return RunRecord.started(loaded.record(), asdict(SearchSettings(space="regularize")), data, session, None,
                             placement.Decision(False, 1, "alone").record())


def test_a_started_record_is_run_json_as_readers_know_it(tmp_path):
    record = started_record(tmp_path)
    record.save(tmp_path)
    info = json.loads((tmp_path / store.RUN_FILE).read_text())
    assert list(info) == ["study", "options", "data", "versions", "host", "pid", "dashboard_url", "ray_address",
                          "storage", "nodes", "fusion", "started_at", "status", "events"]
    assert info["status"] == "running" and info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    assert info["study"]["name"] == "regularize" and info["options"]["space"] == "regularize"
    assert info["data"]["sizes"] == {"train": 10, "val": 5, "test": 5} and info["storage"] is None
    assert [e["event"] for e in info["events"]] == ["started"]
    assert set(info["versions"]) == {"tunefm", "ray", "torch", "python"}
    assert info["ray_address"] == "127.0.0.1:6379" and info["dashboard_url"] == "http://127.0.0.1:8265"
    assert RunRecord.load(tmp_path).to_json() == json.loads(json.dumps(record.to_json()))


def test_transitions_record_what_happened_in_order(tmp_path):
    record = started_record(tmp_path)
    record.interrupted("SIGTERM", trials_done=1)
    assert record.status == "interrupted" and record.finished_at
    assert record.events[-1] | {"at": None} == {"event": "interrupted", "at": None, "pid": os.getpid(),
                                                 "host": socket.gethostname(), "signal": "SIGTERM", "trials_done": 1}
    settings = SearchSettings(space="regularize", address="auto", max_failures=5)
    session = {"dashboard_url": None, "ray_address": "10.0.0.1:6379"}
    record.resumed(settings.resume_changes(), session, trials_done=1)
    assert record.status == "running" and record.options["address"] == "auto" and record.options["max_failures"] == 5
    assert record.ray_address == "10.0.0.1:6379"
    record.failed(RuntimeError("disk full\nmore detail"))
    assert record.status == "failed" and record.error == "disk full"
    record.status = "running"  # as a killed search leaves it
    record.resumed(settings.resume_changes(), session, trials_done=2)
    assert record.error is None
    record.evaluated({"top_k": 3, "trials": ["a"]})
    record.completed(failed_trials=1, checkpoints={"policy": "best"})
    assert record.status == "completed with errors" and record.failed_trials == 1
    assert [e["event"] for e in record.events] == ["started", "interrupted", "resumed", "failed", "lost", "resumed",
                                                   "completed with errors"]
    assert record.events[4]["note"].startswith(f"search process {os.getpid()} ended without recording why")
    record.save(tmp_path)
    info = json.loads((tmp_path / store.RUN_FILE).read_text())
    assert {"failed_trials", "evaluation", "checkpoints", "finished_at"} <= set(info)
    assert "error" not in info  # cleared by the resume


def test_a_run_json_from_another_version_keeps_every_key(tmp_path):
    """Keys this version does not know survive a load and a save; missing ones are None."""
    (tmp_path / store.RUN_FILE).write_text(json.dumps({"study": {"name": "old"}, "status": "interrupted",
                                                       "future_key": [1, 2]}))
    record = RunRecord.load(tmp_path)
    assert record.study == {"name": "old"} and record.pid is None and record.extra == {"future_key": [1, 2]}
    record.evaluated({"top_k": 1}).save(tmp_path)
    info = json.loads((tmp_path / store.RUN_FILE).read_text())
    assert info["future_key"] == [1, 2] and info["evaluation"] == {"top_k": 1} and info["status"] == "interrupted"


def test_a_damaged_run_json_is_one_error_line(tmp_path):
    (tmp_path / store.RUN_FILE).write_text("{not json")
    with pytest.raises(UserError, match=rf"^cannot read {re.escape(str(tmp_path / store.RUN_FILE))}: "):
        RunRecord.load(tmp_path)


def test_a_live_search_is_one_whose_process_runs_here(tmp_path):
    record = started_record(tmp_path)
    assert record.live_pid() == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record.pid = int(dead.stdout)
    assert record.live_pid() is None
    record.pid, record.host = os.getpid(), "another-host"
    assert record.live_pid() is None  # not this machine's to judge
    record.host, record.status = socket.gethostname(), "interrupted"
    assert record.live_pid() is None


@pytest.mark.slow
def test_ray_session_shuts_down_the_ray_it_started_even_on_error(tmp_path):
    """In a fresh process (the test session's own Ray would be joined instead, and left
    running: every search test in this session joins it that way)."""
    script = """
import ray
from tunefm.tune import lifecycle
try:
    with lifecycle.ray_session(None, num_cpus=1, include_dashboard=False) as session:
        assert ray.is_initialized() and session.cluster.nodes[0]["CPU"] == 1
        raise KeyError("boom")
except KeyError:
    pass
assert not ray.is_initialized()
print("ok")
"""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_ray_session_refuses_a_trial_no_node_can_hold_before_starting_ray(tmp_path):
    import ray

    if ray.is_initialized():  # the session's Ray: the check runs against its nodes instead
        with pytest.raises(UserError, match=r"^--cpus-per-trial 64 can never be met: the largest node has 2 CPU$"):
            with lifecycle.ray_session(None, cpus_per_trial=64):
                pass
    else:
        with pytest.raises(UserError, match=r"^--cpus-per-trial 4096 can never be met"):
            with lifecycle.ray_session(None, cpus_per_trial=4096):
                pass
        assert not ray.is_initialized()


def code_lines(folder: Path):
    for module in sorted(folder.rglob("*.py")):
        for number, line in enumerate(module.read_text().splitlines(), 1):
            yield module, number, line


# call -> the modules allowed to make it (tunefm/ and benchmarks/)
ALLOWED = {"write_json(": {"record.py"}, "ray.shutdown(": {"lifecycle.py"},
           "start_ray(": {"lifecycle.py", "cluster.py"}, "ray.init(": {"cluster.py"}}


def test_only_the_run_module_writes_run_json_or_starts_and_stops_ray():
    offenders = []
    for module, number, line in [*code_lines(TUNEFM), *code_lines(REPO / "benchmarks")]:
        for call, allowed in ALLOWED.items():
            if call in line and module.name not in allowed and not line.lstrip().startswith("def "):
                offenders.append(f"{module.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders
