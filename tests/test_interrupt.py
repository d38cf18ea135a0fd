"""GracefulStop: real signals to this process, a stand-in for Tune's SIGUSR1 handler."""

import os
import signal
import subprocess
import sys

import pytest

from tunefm.tune.interrupt import GracefulStop


@pytest.fixture(autouse=True)
def keep_sigusr1():
    """The stand-ins for Tune's handler must not outlive the test."""
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_the_first_signal_in_tunes_loop_asks_tune_to_stop_and_a_second_stops_at_once():
    asked = []
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        with stop.tune_loop():
            signal.signal(signal.SIGUSR1, lambda number, frame: asked.append(number))  # what tune.run installs
            os.kill(os.getpid(), signal.SIGTERM)
            assert asked == [signal.SIGTERM] and stop.signal == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == "SIGTERM"  # the first one is what the run records
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_a_signal_outside_tunes_loop_stops_at_once():
    with GracefulStop() as stop:
        signal.signal(signal.SIGUSR1, lambda number, frame: pytest.fail("Tune's loop is not running"))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == "SIGINT"


def test_a_stale_tune_handler_from_an_earlier_search_is_not_called():
    signal.signal(signal.SIGUSR1, lambda number, frame: pytest.fail("a finished search's handler"))
    with GracefulStop() as stop:
        with stop.tune_loop():  # a signal before tune.run has installed its handler
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal == "SIGINT"


def test_a_worker_told_to_exit_in_a_destructor_prints_no_traceback():
    """Ray stops workers with SIGTERM (SystemExit) wherever they are; in a destructor Python
    would print it to the search's terminal. Other exceptions there are still shown."""
    code = ("from tunefm.tune import interrupt\ninterrupt.quiet_exit_during_garbage_collection()\n"
            "class Exiting:\n    def __del__(self):\n        raise SystemExit(1)\n"
            "class Broken:\n    def __del__(self):\n        raise ValueError('shown')\n"
            "Exiting(); Broken(); print('ran on')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "ran on\n" and "SystemExit" not in done.stderr
    assert "Exception ignored in" in done.stderr and "ValueError: shown" in done.stderr
