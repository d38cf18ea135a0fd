"""Shared by the benchmark scripts: the machine description, timing, and writing results.

Every script writes `<out>/<name>.json` (the command, the machine, the rows) and
`<out>/<name>.md` (the same as a table under the machine description).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from tunefm.engine import bench, devices


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def machine(device: str = "cpu") -> dict:
    info = {"cpu": bench.cpu_name(), "cores": os.cpu_count(), "memory_gib": memory_gib(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device == "cuda":
        info["gpu"] = devices.name(torch.device("cuda", 0))
        info["gpu_memory_gib"] = round(devices.memory(torch.device("cuda", 0))[1] / 2**30, 1)
        info["gpus"] = devices.count()
    try:  # the installed version, without importing Ray (the GPU scripts must run without it)
        info["ray"] = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def describe(info: dict) -> str:
    text = (f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, torch {info['torch']} "
            f"with {info['torch_threads']} thread(s), Python {info['python']}")
    if info.get("ray"):
        text += f", Ray {info['ray']}"
    if info.get("gpu"):
        text += f", GPU {info['gpu']} ({info['gpu_memory_gib']} GiB)"
    return text + f"; device {info['device']}."


sync, timed = devices.synchronize, devices.timed  # the same timing as `tunefm bench`


def tunefm_fit(settings) -> tuple[float, Path]:
    """Seconds in `Tuner.fit` of `tunefm search` with `settings` (a `SearchSettings`,
    run whole, on the Ray of the caller's `lifecycle.ray_session`), and the run folder it wrote."""
    from tunefm.tune import search

    outcome = search.run(settings, echo=lambda line: None)
    return outcome.fit_seconds, outcome.run_dir


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write(out: str | Path, name: str, title: str, info: dict, rows: list[dict], table: str,
          notes: str = "", **extra) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = command_line()
    (out / f"{name}.json").write_text(json.dumps(
        {"command": command, "machine": info, **extra, "rows": rows}, indent=2) + "\n")
    text = f"# {title}\n\n`{command}`\n\nMachine: {describe(info)}\n\n{table}"
    if notes:
        text += "\n" + notes.strip() + "\n"
    (out / f"{name}.md").write_text(text)
    print(f"wrote {out / name}.json and .md")
