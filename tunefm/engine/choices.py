"""The names of how trials may train, as a user writes them (`--loop`, `--fuse`), and their
checks: importable without torch, so the CLI lists them and settings check them at start-up.

    loops.py        what each loop does (layouts, kernels, captured graphs)
    training_plan   which one a trial gets
"""

from __future__ import annotations

from tunefm.errors import UserError

AUTO = "auto"
LOOPS = (AUTO, "plain", "channels_last", "native_conv", "captured")
LOOP_CANDIDATES = {"cpu": ("plain", "channels_last", "native_conv"), "cuda": ("plain", "captured")}
FUSE_MODES = (AUTO, "on", "off")


def check_loop(loop: str, device_type: str | None = None) -> str:
    """`loop` if it is one, and one the device runs; else a UserError naming the valid ones."""
    if loop not in LOOPS:
        raise UserError(f"--loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    runs_there = LOOP_CANDIDATES.get(device_type, ("plain",))
    if device_type is not None and loop != AUTO and loop not in runs_there:
        raise UserError(f"--loop {loop} does not run on {device_type}; valid there: {', '.join((AUTO,) + runs_there)}")
    return loop


def check_fuse(mode: str) -> str:
    if mode not in FUSE_MODES:
        raise UserError(f"--fuse must be one of {', '.join(FUSE_MODES)}, got {mode!r}")
    return mode
