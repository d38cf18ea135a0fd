"""An offline bundle: Ray, the wheels a search imports and Fashion-MNIST, for a machine that
has Python, PyTorch and the scientific stack but no Ray and no package index.

    python -m tunefm.bundle build bundle/ --python 3.12              # here: PyPI reachable
    python -m tunefm.bundle install bundle/ --target ~/tunefm-site  # there: no network
    . ~/tunefm-site/env.sh && python -m tunefm.cli search --space fourfam ...

What goes in: the closure of tunefm's requirements for the target Python and platform, less
what the target has already (`BASE`, and what those need), less what no search or summary
ever imports (`LEFT_OUT`), plus what the target may have too old (`ALWAYS`). Ray is repacked
without what Python never loads for a search (`RAY_DROPPED`: the Java jars, RLlib, Serve,
Ray LLM, the dashboard's source maps) into one tar.xz; the other wheels stay as they are;
the four IDX files as xz. `build` fails if the folder would pass `LIMIT_MIB`.

Where the wheels come from: `--source index` (pip resolves and downloads them for the
target) or `--source environment` (this interpreter's installed distributions, for a target
like this machine: no network; what the tests use).

`install` unpacks everything into one folder (no pip, no network), decompresses the data,
writes env.sh and runs `check`: every module a search and a summary import, and every Ray
dashboard module Ray's dashboard loads, imported from the bundle's folder.

This module imports only the standard library, `packaging` and numpy (`tunefm.engine.data`;
both on every target) at its top, so `python -m tunefm.bundle install` runs from a checkout
before anything is installed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import importlib.metadata as metadata
import io
import json
import lzma
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from tunefm.engine import data

LIMIT_MIB = 60
FORMAT = 1

# What the GPU machine has (the issue that made this bundle lists it); what these need is assumed there too.
BASE = ("torch", "torchvision", "numpy", "pandas", "pyarrow", "click", "pyyaml", "psutil", "matplotlib",
        "statsmodels", "scikit-learn", "scipy", "networkx", "requests", "grpcio", "prometheus-client",
        "msgpack", "filelock", "packaging", "fsspec", "attrs", "aiohttp", "protobuf", "pillow")
# On the target, but maybe older than what a bundled package needs (googleapis-common-protos
# needs protobuf >= 6.33.5, pydantic-core typing-extensions >= 4.16): bundled anyway.
ALWAYS = ("protobuf", "typing-extensions",
          "googleapis-common-protos")  # Ray's reporter agent imports google.rpc; it comes with google-api-core
LEFT_OUT = {
    "plotly": "the interactive report only (10 MB); `tunefm report` needs `pip install plotly`",
    "py-spy": "the dashboard's profiler button, a 3 MB binary",
    "virtualenv": "Ray's runtime environments with pip; a search uses none",
    "memray": "the dashboard's memory profiler",
    "smart-open": "Ray's runtime environments from remote URIs",
    "google-api-core": "OpenCensus' Stackdriver exporter (with google-auth and cryptography, 8 MB of wheels)",
    "google-auth": "OpenCensus' Stackdriver exporter",
    "sqlalchemy": "Optuna's database storage; a search keeps its Optuna study in memory",
    "alembic": "Optuna's database storage",
}
RAY_DROPPED = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/")
RAY_DROPPED_MODULES = tuple(p.rstrip("/").replace("/", ".") for p in RAY_DROPPED)
# What a search, its trials and a summary import (the CLI's commands import the rest lazily).
CHECK_MODULES = ("tunefm.cli", "tunefm.tune.search", "tunefm.tune.executor", "tunefm.tune.member",
                 "tunefm.tune.trial", "tunefm.analysis.summary", "tunefm.analysis.importance",
                 "tunefm.searchers.hyperopt", "tunefm.searchers.optuna_samplers", "ray.tune", "ray.train",
                 "ray.tune.search.hyperopt", "ray.tune.search.optuna", "ray.dashboard.head",
                 "ray.dashboard.agent", "ray.dashboard.optional_deps", "ray.util.state", "tensorboardX",
                 "hyperopt", "optuna", "cmaes", "statsmodels.api", "sklearn.ensemble", "pyarrow.parquet")


class BundleError(Exception):
    """A bundle that cannot be built or installed as asked: one line saying why."""


@dataclass(frozen=True)
class Target:
    """The Python and platform the bundle is for."""

    python: str  # "3.12"
    platform: str  # pip's --platform: manylinux_2_28_x86_64

    @classmethod
    def here(cls) -> "Target":
        return cls(f"{sys.version_info.major}.{sys.version_info.minor}", "manylinux_2_28_x86_64")

    def marker_environment(self) -> dict[str, str]:
        machine = self.platform.rsplit("_", 1)[-1] if "x86_64" not in self.platform else "x86_64"
        return {"python_version": self.python, "python_full_version": f"{self.python}.0",
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                "platform_machine": machine, "platform_release": "", "platform_version": "",
                "implementation_version": f"{self.python}.0", "extra": ""}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted(requirement: Requirement, environment: dict[str, str], extras: set[str]) -> bool:
    """Whether `requirement` applies on the target, for a package asked for with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras | {""})


def root_requirements() -> list[Requirement]:
    """tunefm's own requirements, extras left out (they are optional)."""
    requirements = [Requirement(r) for r in metadata.requires("tunefm") or []]
    return [r for r in requirements if r.marker is None or "extra" not in str(r.marker)]


def closure(roots: list[Requirement], requires_of, environment: dict[str, str]) -> dict[str, set[str]]:
    """The packages to bundle (name -> extras asked for): `roots` and what they need on the
    target, not descending into BASE (the target has them and what they need) or LEFT_OUT.
    `requires_of(name)` gives a package's requirements."""
    base = {canonical(n) for n in BASE} - {canonical(n) for n in ALWAYS}
    skip = base | {canonical(n) for n in LEFT_OUT}
    chosen: dict[str, set[str]] = {}
    pending = [(canonical(r.name), set(r.extras)) for r in roots]
    while pending:
        name, extras = pending.pop()
        if name in skip or (name in chosen and extras <= chosen[name]):
            continue
        chosen[name] = chosen.get(name, set()) | extras
        for requirement in requires_of(name):
            if wanted(requirement, environment, chosen[name]):
                pending.append((canonical(requirement.name), set(requirement.extras)))
    for name in ALWAYS:
        chosen.setdefault(canonical(name), set())
    return chosen


# --- where the wheels come from ------------------------------------------------------------

def _pip(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BundleError(f"pip {args[0]} failed: {last}")
    return done


def _pip_target_options(target: Target) -> list[str]:
    return ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp",
            "--platform", target.platform, "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64"]


def from_index(target: Target, folder: Path) -> dict[str, Path]:
    """Resolve tunefm's requirements for `target` (pip, metadata only) and download the
    wheels to bundle into `folder`: name -> wheel."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        roots = root_requirements()
        _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
             "--target", str(Path(scratch) / "t"), *_pip_target_options(target), *map(str, roots))
        resolved = {canonical(item["metadata"]["name"]): item for item in json.loads(report.read_text())["install"]}
    for name in ALWAYS:  # not asked for by anything resolved: pin the newest for the target
        resolved.setdefault(canonical(name), {"metadata": {"name": name, "version": "", "requires_dist": []}})

    def requires_of(name: str) -> list[Requirement]:
        item = resolved.get(name)
        return [Requirement(r) for r in (item or {}).get("metadata", {}).get("requires_dist") or []]

    chosen = closure(roots, requires_of, target.marker_environment())
    pins = [f"{resolved[n]['metadata']['name']}=={resolved[n]['metadata']['version']}".rstrip("=")
            for n in sorted(chosen) if n in resolved]
    folder.mkdir(parents=True, exist_ok=True)
    _pip("download", "--no-deps", "--quiet", "-d", str(folder), *_pip_target_options(target), *pins)
    wheels = {canonical(p.name.split("-")[0]): p for p in folder.glob("*.whl")}
    missing = sorted(set(chosen) - set(wheels))
    if missing:
        raise BundleError(f"pip downloaded no wheel for {', '.join(missing)}")
    return {name: wheels[name] for name in chosen}


def _installed_files(distribution: metadata.Distribution) -> list[tuple[str, Path]]:
    """(path in a wheel, file here) of an installed distribution, compiled caches left out."""
    files = []
    for file in distribution.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc":
            continue  # scripts outside site-packages; bytecode Python writes again
        located = Path(distribution.locate_file(file))
        if located.is_file():
            files.append((file.as_posix(), located))
    return files


def from_environment(folder: Path) -> dict[str, Path]:
    """The installed distributions to bundle, repacked as wheels into `folder` (no network):
    for a target with this machine's Python and platform."""
    here = Target.here()

    def requires_of(name: str) -> list[Requirement]:
        try:
            return [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            return []

    chosen = closure(root_requirements(), requires_of, here.marker_environment())
    folder.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for name in sorted(chosen):
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise BundleError(f"{name} is not installed here; build with --source index") from None
        wheel = folder / f"{canonical(name).replace('-', '_')}-{distribution.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            for arcname, located in _installed_files(distribution):
                info = zipfile.ZipInfo.from_file(located, arcname)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, located.read_bytes())
        wheels[name] = wheel
    return wheels


# --- building -----------------------------------------------------------------------------

def _ray_kept(name: str) -> bool:
    return not (name.startswith(RAY_DROPPED) or name.endswith(".js.map"))


def _stripped(content: bytes, strip: str) -> bytes:
    """An ELF file without its symbol table (`strip --strip-unneeded`: what linking and loading
    need stays)."""
    with tempfile.NamedTemporaryFile() as f:
        f.write(content)
        f.flush()
        done = subprocess.run([strip, "--strip-unneeded", f.name], capture_output=True)
        return Path(f.name).read_bytes() if done.returncode == 0 else content


def slim_ray(wheel: Path, out: Path, preset: int) -> dict[str, int]:
    """Ray's wheel as a tar.xz of what a search loads (file modes kept: its raylet and GCS
    server are executables), its RECORD listing only those files. Its binaries ship with
    their symbol tables (120 MB of Ray's 144); stripped where `strip` exists, they pack 4 MiB
    smaller, and a crash's stack trace in Ray's logs shows addresses instead of names."""
    strip = shutil.which("strip")
    kept = dropped = 0
    with zipfile.ZipFile(wheel) as archive, \
            tarfile.open(out, "w:xz", preset=preset) as tar:  # type: ignore[call-arg]
        names = archive.namelist()
        for name in names:
            if name.endswith("/"):
                continue
            if not _ray_kept(name):
                dropped += archive.getinfo(name).file_size
                continue
            content = archive.read(name)
            if content[:4] == b"\x7fELF" and strip:
                content = _stripped(content, strip)
            if name.endswith(".dist-info/RECORD"):
                content = "".join(line + "\n" for line in content.decode().splitlines()
                               if _ray_kept(line.split(",", 1)[0])).encode()
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = (archive.getinfo(name).external_attr >> 16) & 0o777 or 0o644
            tar.addfile(info, io.BytesIO(content))
            kept += len(content)
    return {"kept_bytes": kept, "dropped_bytes": dropped, "stripped": bool(strip)}


def _idx_path(folder: Path, stem: str) -> Path:
    """The plain or gzipped IDX file `data.find_file` finds."""
    path = data.find_file(folder, stem)
    if path is None:
        raise BundleError(f"no {stem} (or {stem}.gz) in {folder}: give --data-dir the folder of the four IDX files")
    return path


def _idx_bytes(folder: Path, stem: str) -> bytes:
    path = _idx_path(folder, stem)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        return f.read()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # the largest file is Ray's, 25 MB


def build(out: str | os.PathLike, data_dir: str | os.PathLike, target: Target | None = None,
          source: str = "index", preset: int = 6, echo=print, limit_mib: float | None = LIMIT_MIB) -> dict:
    """Build the bundle folder `out` (it must not exist or be empty); returns its manifest.
    `preset`: xz's (6 packs Ray into about 25 MB; 0 is fast and half as tight)."""
    out, data_dir = Path(out), Path(data_dir)
    target = target or Target.here()
    if source == "environment" and target != Target.here():
        raise BundleError(f"--source environment bundles this machine's Python {Target.here().python}; "
                          f"for Python {target.python} use --source index")
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty; give a new folder")
    for stem in data.FILES.values():  # before minutes of packing
        _idx_path(data_dir, stem)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _build(out, data_dir, target, source, preset, echo, limit_mib)
    except BaseException:  # a failed build leaves no half-made bundle: `out` as it was
        for made in out.iterdir():
            if made.is_dir():
                shutil.rmtree(made)
            else:
                made.unlink()
        if created:
            out.rmdir()
        raise


def _build(out: Path, data_dir: Path, target: Target, source: str, preset: int, echo,
           limit_mib: float | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        echo(f"Resolving tunefm's requirements for Python {target.python} ({source}) ...")
        wheels = from_index(target, Path(scratch)) if source == "index" else from_environment(Path(scratch))
        (out / "wheels").mkdir()
        ray_wheel = wheels.pop("ray", None)
        if ray_wheel is None:
            raise BundleError("the requirements resolved to no Ray")
        echo(f"Repacking Ray without {', '.join(RAY_DROPPED)} and *.js.map (xz -{preset}) ...")
        ray_archive = out / f"ray-{_wheel_version(ray_wheel)}.tar.xz"
        ray_figures = slim_ray(ray_wheel, ray_archive, preset)
        for name, wheel in sorted(wheels.items()):
            (out / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    (out / "fashion-mnist").mkdir()
    echo(f"Compressing Fashion-MNIST from {data_dir} (xz -{preset}) ...")
    for stem in data.FILES.values():
        (out / "fashion-mnist" / f"{stem}.xz").write_bytes(lzma.compress(_idx_bytes(data_dir, stem), preset=preset))
    files = {p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(out.rglob("*")) if p.is_file()}
    total = sum(f["bytes"] for f in files.values())
    manifest = {"format": FORMAT, "python": target.python, "platform": target.platform, "source": source,
                "ray": ray_archive.name, "ray_repack": ray_figures, "base": list(BASE),
                "left_out": LEFT_OUT, "files": files, "total_bytes": total}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if limit_mib is not None and total > limit_mib * 2**20:
        raise BundleError(f"the bundle is {total / 2**20:.1f} MiB, over its {limit_mib:g} MiB limit "
                          f"(largest: {_largest(files)})")
    echo(f"Bundle: {out} ({total / 2**20:.1f} MiB: Ray {files[ray_archive.name]['bytes'] / 2**20:.1f}, "
         f"{len(wheels)} wheels {_sum(files, 'wheels/') / 2**20:.1f}, data {_sum(files, 'fashion-mnist/') / 2**20:.1f})")
    return manifest


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _sum(files: dict, prefix: str) -> int:
    return sum(f["bytes"] for name, f in files.items() if name.startswith(prefix))


def _largest(files: dict) -> str:
    name = max(files, key=lambda n: files[n]["bytes"])
    return f"{name}, {files[name]['bytes'] / 2**20:.1f} MiB"


# --- installing ---------------------------------------------------------------------------

def _unpack_wheel(wheel: Path, target: Path) -> None:
    """A wheel's files into `target` as pip would lay out a --target install (its .data
    purelib/platlib at the top; scripts and headers left out: the bundle runs `python -m`)."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            name = info.filename
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            if name.endswith("/"):
                continue
            path = target / name
            if not path.resolve().is_relative_to(target.resolve()):
                raise BundleError(f"{wheel.name} has a file outside its folder: {info.filename}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)


def install(bundle: str | os.PathLike, target: str | os.PathLike, data_dir: str | os.PathLike | None = None,
            check_after: bool = True, echo=print) -> Path:
    """Install the bundle into the folder `target` (no network, no pip); the data into
    `data_dir` (default: target/fashion-mnist). Writes target/env.sh; runs `check`."""
    bundle, target = Path(bundle), Path(target).absolute()
    manifest_path = bundle / "manifest.json"
    if not manifest_path.exists():
        raise BundleError(f"{bundle} is not a tunefm bundle (no manifest.json); build one with "
                          f"`python -m tunefm.bundle build`")
    manifest = json.loads(manifest_path.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise BundleError(f"the bundle is for Python {manifest['python']} and this is Python {here}; "
                          f"build one with --python {here}")
    for name, figures in manifest["files"].items():
        if _sha256(bundle / name) != figures["sha256"]:
            raise BundleError(f"{name} in the bundle is damaged (its sha256 differs from the manifest's)")
    target.mkdir(parents=True, exist_ok=True)
    echo(f"Unpacking {manifest['ray']} into {target} ...")
    with tarfile.open(bundle / manifest["ray"], "r:xz") as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)  # noqa: S202 - our own archive, its names checked by `build`
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    for wheel in wheels:
        _unpack_wheel(wheel, target)
    data_folder = Path(data_dir).absolute() if data_dir else target / "fashion-mnist"
    data_folder.mkdir(parents=True, exist_ok=True)
    for stem in data.FILES.values():
        (data_folder / stem).write_bytes(lzma.decompress((bundle / "fashion-mnist" / f"{stem}.xz").read_bytes()))
    repository = Path(__file__).resolve().parent.parent
    (target / "env.sh").write_text(f"# . {target}/env.sh: tunefm and its bundle on this Python's path\n"
                                   f"export PYTHONPATH={target}:{repository}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                                   f"export TUNEFM_DATA_DIR={data_folder}\n")
    echo(f"Installed Ray, {len(wheels)} wheels and Fashion-MNIST ({data_folder}); `. {target}/env.sh` to use them")
    if check_after:
        run_check(target, repository)
    return target


def environment_for(target: Path, repository: Path) -> dict[str, str]:
    """The environment that puts the bundle's folder and this checkout first on Python's path."""
    paths = [str(target), str(repository)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_check(target: Path, repository: Path, python: str = sys.executable) -> None:
    done = subprocess.run([python, "-m", "tunefm.bundle", "check", "--expect", str(target)],
                          env=environment_for(target, repository), capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode:
        raise BundleError((done.stderr.strip().splitlines() or ["the check failed"])[-1].removeprefix("Error: "))


def check(expect: str | None = None) -> list[str]:
    """Import everything a search and a summary import, and every dashboard module Ray's
    dashboard loads (those needing what the bundle leaves out of Ray excepted); returns the
    lines to print. `expect`: the folder Ray must come from."""
    failures, lines = [], []
    for name in CHECK_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # any error importing it would stop a search
            failures.append(f"{name}: {type(e).__name__}: {e}")
    import ray  # from wherever the path puts it: the bundle's folder, if installed right
    import ray.dashboard.modules

    if expect and not Path(ray.__file__).resolve().is_relative_to(Path(expect).resolve()):
        failures.append(f"ray comes from {Path(ray.__file__).parent}, not the bundle's {expect}")
    dashboard, skipped = 0, 0
    for _, name, _ in pkgutil.walk_packages(ray.dashboard.modules.__path__, "ray.dashboard.modules."):
        try:
            importlib.import_module(name)
            dashboard += 1
        except ModuleNotFoundError as e:
            if (e.name or "").startswith(RAY_DROPPED_MODULES):
                skipped += 1  # a module for Serve or LLM, which Ray's dashboard skips too
            else:
                failures.append(f"{name}: {type(e).__name__}: {e}")
        except Exception as e:
            failures.append(f"{name}: {type(e).__name__}: {e}")
    if failures:
        raise BundleError(f"{len(failures)} import(s) failed; the first: {failures[0]}")
    lines.append(f"Check passed: Ray {ray.__version__} from {Path(ray.__file__).parent}, {len(CHECK_MODULES)} "
                 f"modules of a search and a summary, {dashboard} dashboard modules "
                 f"({skipped} for what the bundle leaves out, skipped as Ray's dashboard does)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunefm.bundle", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build a bundle folder (needs PyPI unless --source environment)")
    make.add_argument("out")
    make.add_argument("--python", default=Target.here().python, help="the target's Python (major.minor)")
    make.add_argument("--platform", default=Target.here().platform, help="the target's platform tag, for pip")
    make.add_argument("--source", choices=("index", "environment"), default="index")
    make.add_argument("--data-dir", default=os.environ.get("TUNEFM_DATA_DIR"),
                      help="the four Fashion-MNIST IDX files  [default: $TUNEFM_DATA_DIR]")
    make.add_argument("--xz-preset", type=int, default=6, choices=range(10), metavar="0-9")
    put = commands.add_parser("install", help="install a bundle into a folder (no network)")
    put.add_argument("bundle")
    put.add_argument("--target", required=True, help="the folder to install into")
    put.add_argument("--data-dir", default=None, help="where the IDX files go  [default: TARGET/fashion-mnist]")
    put.add_argument("--no-check", action="store_true")
    verify = commands.add_parser("check", help="import what a search needs (run by install)")
    verify.add_argument("--expect", default=None, help="the folder Ray must come from")
    options = parser.parse_args(argv)
    try:
        if options.command == "build":
            if not options.data_dir:
                raise BundleError("give --data-dir (or set TUNEFM_DATA_DIR): the folder of the four IDX files")
            build(options.out, options.data_dir, Target(options.python, options.platform), options.source,
                  options.xz_preset)
        elif options.command == "install":
            install(options.bundle, options.target, options.data_dir, check_after=not options.no_check)
        else:
            print("\n".join(check(options.expect)))
    except BundleError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
