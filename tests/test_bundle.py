"""The offline bundle (tunefm/bundle.py) is complete: built from this environment (no network),
installed into an empty folder by an interpreter that sees only the packages the GPU machine
has (`bundle.BASE` and what they need), a search with Ray's dashboard and a summary run from it."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from local_cluster import fresh_ray_env
from packaging.requirements import Requirement

from tunefm import bundle
from tunefm.run import store

pytestmark = pytest.mark.slow
REPOSITORY = Path(__file__).resolve().parent.parent


def base_site(folder: Path, bundled: set[str]) -> Path:
    """A folder holding links to the installed BASE distributions and everything they need (the
    GPU machine's packages), except what the bundle brings: the only packages besides it."""
    names, todo = set(), [bundle.canonical(n) for n in bundle.BASE]
    while todo:
        name = todo.pop()
        if name in names or name in bundled:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker's dependency for another platform
        names.add(name)
        todo += [bundle.canonical(Requirement(r).name) for r in distribution.requires or []
                 if Requirement(r).marker is None or Requirement(r).marker.evaluate()]
    folder.mkdir()
    for name in names:
        distribution = metadata.distribution(name)
        for top in {f.parts[0] for f in distribution.files or [] if f.parts[0] != ".."}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def test_a_bundle_installed_beside_only_the_gpu_machines_packages_runs_a_search_and_a_summary(tmp_path, data_dir):
    manifest = bundle.build(tmp_path / "bundle", data_dir, source="environment", preset=0, echo=lambda line: None,
                            limit_mib=None)  # xz -0: fast, and over the limit xz -6 keeps
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in (tmp_path / "bundle").rglob("*")
                                          if p.is_file() and p.name != "manifest.json")
    names = {bundle.canonical(w.name.split("-")[0]) for w in (tmp_path / "bundle" / "wheels").glob("*.whl")}
    assert {"optuna", "hyperopt", "tensorboardx", "aiohttp-cors", "opencensus", "pydantic", "protobuf"} <= names
    assert not names & {bundle.canonical(n) for n in (*bundle.LEFT_OUT, "torch", "numpy", "pandas", "ray")}
    assert manifest["ray_repack"]["dropped_bytes"] > 30e6  # the jars, RLlib, Serve, LLM
    # An interpreter with no site-packages: the bundle's folder and BASE are all it can import.
    empty = tmp_path / "empty"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(empty)], check=True)
    python = str(empty / "bin" / "python")
    base = base_site(tmp_path / "base", names | {"ray"})
    env = {**fresh_ray_env(tmp_path), "PYTHONPATH": f"{REPOSITORY}:{base}"}
    env.pop("TUNEFM_DATA_DIR", None)
    lacking = subprocess.run([python, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert "No module named 'ray'" in lacking.stderr  # the point: Ray comes from the bundle alone
    site = tmp_path / "site"
    installed = subprocess.run([python, "-m", "tunefm.bundle", "install", str(tmp_path / "bundle"), "--target",
                                str(site)], env=env, capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Check passed: Ray " in installed.stdout and f"from {site}/ray" in installed.stdout
    assert "dashboard modules" in installed.stdout
    # env.sh puts the bundle first and names the data it decompressed
    sourced = subprocess.run(["bash", "-c", f". {site}/env.sh && echo $PYTHONPATH && echo $TUNEFM_DATA_DIR"],
                             env=env, capture_output=True, text=True, check=True).stdout.split()
    assert sourced == [f"{site}:{REPOSITORY}:{REPOSITORY}:{base}", f"{site}/fashion-mnist"]
    env = {**env, "PYTHONPATH": sourced[0], "TUNEFM_DATA_DIR": sourced[1]}
    results = tmp_path / "results"
    searched = subprocess.run([python, "-m", "tunefm", "search", "--space", "fourfam", "--set", "model=iaro1",
                               "--set", "lr=0.01,0.05", "--set", "batch_size=256", "--max-epochs", "1",
                               "--train-size", "600", "--val-size", "200", "--test-size", "200", "--results",
                               str(results), "--name", "run"], env=env, capture_output=True, text=True, timeout=300)
    assert searched.returncode == 0, searched.stdout[-3000:] + searched.stderr[-3000:]
    assert any(line.startswith("Ray dashboard: http://127.0.0.1:") for line in searched.stdout.splitlines())
    assert "could not start" not in searched.stdout
    loaded = store.load_run(results / "run")
    assert len(loaded.trials) == 2 and (loaded.trials.status == "TERMINATED").all()
    summary = subprocess.run([python, "-m", "tunefm", "summarize", "run", "--results", str(results), "--format",
                              "json", "--section", "best"], env=env, capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["best"]


def test_a_bundle_for_another_python_is_one_error_line(tmp_path, data_dir):
    built = subprocess.run([sys.executable, "-m", "tunefm.bundle", "build", str(tmp_path / "b"), "--python", "3.9",
                            "--source", "environment", "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert built.returncode == 1 and built.stderr.splitlines() == [
        f"Error: --source environment bundles this machine's Python {sys.version_info.major}."
        f"{sys.version_info.minor}; for Python 3.9 use --source index"]
    no_data = subprocess.run([sys.executable, "-m", "tunefm.bundle", "build", str(tmp_path / "b"), "--source",
                              "environment", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert no_data.returncode == 1 and no_data.stderr.splitlines() == [
        f"Error: no train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) in {tmp_path}: give --data-dir the "
        f"folder of the four IDX files"] and no_data.stdout == ""  # said before any packing
    assert not (tmp_path / "b").exists()
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "manifest.json").write_text(json.dumps({"python": "3.9"}))
    put = subprocess.run([sys.executable, "-m", "tunefm.bundle", "install", str(tmp_path / "fake"), "--target",
                          str(tmp_path / "site")], capture_output=True, text=True)
    assert put.returncode == 1 and put.stderr.splitlines() == [
        f"Error: the bundle is for Python 3.9 and this is Python {sys.version_info.major}.{sys.version_info.minor}; "
        f"build one with --python {sys.version_info.major}.{sys.version_info.minor}"]
    assert not (tmp_path / "site").exists()
