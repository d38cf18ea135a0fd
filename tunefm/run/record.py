"""run.json: what a run is (study, options, data, versions), where it ran, and what happened
to it, as `RunRecord`, changed only through its named transitions (started, resumed,
interrupted, failed, completed, evaluated). `tune/lifecycle.py` drives them; `tunefm evaluate`
records its evaluation. Plain Python: no Ray, no torch.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from tunefm.run import store


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def event(name: str, **details) -> dict:
    """One entry of run.json's "events": what happened to the run, when, in which process."""
    return {"event": name, "at": now(), "pid": os.getpid(), "host": socket.gethostname(), **details}


def versions() -> dict[str, str]:
    """The installed versions of tunefm, Ray and torch (read from their metadata: nothing imported)."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "unknown"
    return {"tunefm": version("tunefm"), "ray": version("ray"), "torch": version("torch"),
            "python": platform.python_version()}


# Keys written only once they have a value.
LATER_KEYS = ("failed_trials", "evaluation", "checkpoints", "error", "finished_at")


@dataclass
class RunRecord:
    """run.json: what a run is (study, options, data, versions), where it ran, and what
    happened to it (status, events). Unknown keys of an older or newer run.json are kept."""

    study: dict[str, Any] = field(default_factory=dict)  # Study.record()
    options: dict[str, Any] = field(default_factory=dict)  # the SearchSettings
    data: dict[str, Any] = field(default_factory=dict)  # source folder, split sizes, SHA-256 of each file
    versions: dict[str, str] = field(default_factory=dict)
    host: str | None = None  # of the search process, with its pid
    pid: int | None = None
    dashboard_url: str | None = None
    ray_address: str | None = None
    storage: str | None = None  # Tune's experiment folder under --storage; None: <run folder>/tune
    nodes: int | None = None
    fusion: dict[str, Any] | None = None  # placement.Decision.record()
    started_at: str | None = None
    status: str | None = None  # running | interrupted | failed | completed | completed with errors
    events: list[dict[str, Any]] = field(default_factory=list)
    failed_trials: int | None = None
    evaluation: dict[str, Any] | None = None  # evaluate.Evaluation.record()
    checkpoints: dict[str, Any] | None = None  # retention.Pruning.record()
    error: str | None = None
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- reading and writing -------------------------------------------------------------
    @classmethod
    def from_json(cls, info: Mapping[str, Any]) -> "RunRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in info.items() if k in known},
                   extra={k: v for k, v in info.items() if k not in known})

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        """A run's run.json; a damaged one is a one-line UserError."""
        return cls.from_json(store.read_run_info(run_dir))

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra" and not (k in LATER_KEYS and v is None)}
        return {**out, **self.extra}

    def save(self, run_dir: Path) -> None:
        """Replace run.json atomically: a reader sees the old record or the new one."""
        store.write_json(self.to_json(), Path(run_dir) / store.RUN_FILE)

    def live_pid(self) -> int | None:
        return live_search_pid({"status": self.status, "pid": self.pid, "host": self.host})

    # -- transitions ---------------------------------------------------------------------
    @classmethod
    def started(cls, study: dict[str, Any], options: dict[str, Any], data: dict[str, Any],
                session: Mapping[str, Any], storage: str | None, fusion: dict[str, Any]) -> "RunRecord":
        """A new run, "running" in this process. `session`: the Ray it runs on (dashboard_url,
        ray_address, nodes); `study`, `options`, `fusion`: the records of the study, the search
        settings and the placement decision."""
        return cls(study=study, options=options, data=data, versions=versions(), host=socket.gethostname(),
                   pid=os.getpid(), dashboard_url=session["dashboard_url"], ray_address=session["ray_address"],
                   storage=storage, nodes=session["nodes"], fusion=fusion, started_at=now(), status="running",
                   events=[event("started")])

    def resumed(self, changed_options: Mapping[str, Any], session: Mapping[str, Any],
                trials_done: int) -> "RunRecord":
        """Running again in this process, with the options a resume may change; a search process
        that died without a word is recorded as lost."""
        if self.status == "running":  # and its process is gone (resume.check_resumable)
            self.events.append({"event": "lost", "at": self.finished_at or now(),
                                "note": f"search process {self.pid} ended without recording why (killed?)"})
        self.events.append(event("resumed", trials_done=trials_done))
        self.status, self.pid, self.host = "running", os.getpid(), socket.gethostname()
        self.options = {**self.options, **changed_options}
        self.dashboard_url, self.ray_address, self.error = session["dashboard_url"], session["ray_address"], None
        return self

    def interrupted(self, signal_name: str, trials_done: int) -> "RunRecord":
        self.status, self.finished_at = "interrupted", now()
        self.events.append(event("interrupted", signal=signal_name, trials_done=trials_done))
        return self

    def failed(self, error: BaseException) -> "RunRecord":
        self.status, self.finished_at = "failed", now()
        self.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.events.append(event("failed", error=self.error))
        return self

    def evaluated(self, evaluation: dict[str, Any]) -> "RunRecord":
        """The test evaluation (evaluate.Evaluation.record()), replacing any earlier one."""
        self.evaluation = evaluation
        return self

    def completed(self, failed_trials: int, checkpoints: dict[str, Any] | None) -> "RunRecord":
        self.status = "completed" if not failed_trials else "completed with errors"
        self.failed_trials, self.checkpoints, self.finished_at = failed_trials, checkpoints, now()
        self.events.append(event(self.status))
        return self


def live_search_pid(info: Mapping[str, Any]) -> int | None:
    """The process id of the search still writing this run (run.json says "running" and
    that process is alive on this host), else None: finished, interrupted or killed."""
    pid = info.get("pid")
    if info.get("status") != "running" or not pid or info.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # the search was killed
    except PermissionError:
        pass  # alive, another user's
    return pid
