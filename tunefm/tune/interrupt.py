"""Stopping a search cleanly on Ctrl-C (SIGINT) or SIGTERM.

    with GracefulStop() as stop:
        with stop.tune_loop():
            tuner.fit()            # 1st signal: Tune stops its trials and saves its state
        ...                        # a signal here, or a 2nd one: KeyboardInterrupt at once
    if stop.signal: ...            # "SIGINT" / "SIGTERM": the run was interrupted

Ray Tune stops gracefully on SIGINT and SIGUSR1 (it ends its loop, saves the
experiment state with every running trial's last checkpoint, and returns), but it
ignores SIGTERM, which kills Python without running any `finally`, and it replaces
the SIGINT handler. Here both signals go to Tune's handler while Tune's loop runs; any
signal outside that loop, or a second one, raises KeyboardInterrupt so the caller's
cleanup still runs. The caller then flushes its results and records the interruption.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self):
        self.signal: str | None = None  # the first signal received, e.g. "SIGINT"
        self._in_tune = False
        self._previous: dict[int, object] = {}
        self._previous_env: str | None = None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
            # An earlier search in this process left Tune's SIGUSR1 handler, tied to its finished loop.
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            # Tune's own SIGINT handler would replace ours; its SIGUSR1 handler is the one we call.
            self._previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        if self._previous:
            if self._previous_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._previous_env

    @contextlib.contextmanager
    def tune_loop(self):
        """Mark the span in which Tune's loop runs and can stop gracefully."""
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False

    def _handle(self, number, frame) -> None:
        first = self.signal is None
        if first:
            self.signal = signal.Signals(number).name
        tune_handler = signal.getsignal(signal.SIGUSR1)  # installed by tune.run for its whole loop
        if first and self._in_tune and callable(tune_handler):
            tune_handler(number, frame)  # Tune ends its loop after this step and saves its state
            return
        raise KeyboardInterrupt


# Tune's own words when a search stops early: they point at `Tuner.restore(...)` and list
# every unfinished trial; tunefm prints its own summary and resume command instead.
TUNE_STOP_MESSAGES = {
    "ray.tune.tune": ("Stop signal received", "Experiment has been interrupted", "Trials did not complete"),
    "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",),
}


class _DropMessages:
    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_tune_stop_messages() -> None:
    """Silence Tune's interruption messages (once per process)."""
    for name, prefixes in TUNE_STOP_MESSAGES.items():
        tune_logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in tune_logger.filters):
            tune_logger.addFilter(_DropMessages(prefixes))


def _quiet_unraisable(unraisable) -> None:
    if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
        _DEFAULT_UNRAISABLE_HOOK(unraisable)


_DEFAULT_UNRAISABLE_HOOK = None


def quiet_exit_during_garbage_collection() -> None:
    """In a Ray worker: no traceback when the worker is told to exit inside a destructor.

    Ray ends a worker with SIGTERM (as a search stops), which raises SystemExit wherever the
    worker is. In a garbage-collection callback Python cannot raise it, only print it
    ("Exception ignored in ...", with a traceback), and Ray forwards that to the terminal of
    the search, under tunefm's own last lines. The worker exits anyway; other exceptions
    in destructors are still printed."""
    global _DEFAULT_UNRAISABLE_HOOK
    if sys.unraisablehook is not _quiet_unraisable:
        _DEFAULT_UNRAISABLE_HOOK = sys.unraisablehook
        sys.unraisablehook = _quiet_unraisable
