"""Studies: what to search. A study is a grid over config keys plus fixed values.

A study lives in a Python module that defines `STUDY`, either one of the bundled
`search_spaces/` modules (by name) or a user's own file (by path):

    study = study.load("fourfam")             # search_spaces/fourfam.py
    study = study.load("./my_space.py")
    study = study.with_overrides({"model": ["iaro1"], "lr": [0.01]})
    study.num_trials                          # 7

Config vocabulary (a trial's config is a flat dict; see DESIGN.md):

    model         a registered model name (`tunefm.models.names()`)
    lr            learning rate, > 0
    batch_size    integer >= 1
    optimizer     sgd | adam
    momentum      0 <= momentum < 1 (SGD only)
    weight_decay  >= 0
    seed          integer >= 0: model init and batch order
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tunefm import models
from tunefm.errors import UserError

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_model(value):
    models.get(value)  # raises UserError listing the valid names


def _check(condition: Callable[[Any], bool], valid: str) -> Callable[[Any], None]:
    def check(value):
        if not condition(value):
            raise ValueError(valid)
    return check


# key -> (validator, description of valid values, default if the study leaves it out)
VOCABULARY: dict[str, tuple[Callable[[Any], None], Any]] = {
    "model": (_check_model, None),
    "lr": (_check(lambda v: _is_number(v) and v > 0, "a number > 0"), None),
    "batch_size": (_check(lambda v: _is_int(v) and v >= 1, "an integer >= 1"), None),
    "optimizer": (_check(lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'"), "sgd"),
    "momentum": (_check(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"), 0.0),
    "weight_decay": (_check(lambda v: _is_number(v) and v >= 0, "a number >= 0"), 0.0),
    "seed": (_check(lambda v: _is_int(v) and v >= 0, "an integer >= 0"), 0),
}
REQUIRED_KEYS = ("model", "lr", "batch_size")


def validate_value(key: str, value: Any) -> None:
    if key not in VOCABULARY:
        raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(VOCABULARY)}")
    check, _ = VOCABULARY[key]
    try:
        check(value)
    except ValueError as e:
        raise UserError(f"{key} must be {e}, got {key}={value!r}") from None


@dataclass(frozen=True)
class Study:
    """A grid search: every combination of `grid` values, each with `fixed` added."""

    name: str
    description: str
    grid: Mapping[str, Sequence[Any]]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int = 100
    source: str = ""  # the seed study it reproduces

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not self.grid and not self.fixed:
            raise UserError(f"study {self.name!r} has an empty grid: give at least one key")
        for key, values in self.grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
                raise UserError(f"study {self.name!r}: grid[{key!r}] must be a non-empty list of values, "
                                f"got {values!r}")
            for value in values:
                validate_value(key, value)
        overlap = set(self.grid) & set(self.fixed)
        if overlap:
            raise UserError(f"study {self.name!r}: {', '.join(sorted(overlap))} is both in grid and fixed")
        for key, value in self.fixed.items():
            validate_value(key, value)
        missing = [k for k in REQUIRED_KEYS if k not in self.grid and k not in self.fixed]
        if missing:
            raise UserError(f"study {self.name!r} does not set {', '.join(missing)}")
        if not _is_int(self.max_epochs) or self.max_epochs < 1:
            raise UserError(f"max epochs must be an integer >= 1, got {self.max_epochs!r}")

    @property
    def num_trials(self) -> int:
        count = 1
        for values in self.grid.values():
            count *= len(values)
        return count

    def base_config(self) -> dict[str, Any]:
        """Defaults for keys the study leaves out, then its fixed values."""
        defaults = {k: d for k, (_, d) in VOCABULARY.items() if d is not None and k not in self.grid}
        return {**defaults, **self.fixed}

    def config_keys(self) -> list[str]:
        """Every key a trial's config has, in vocabulary order."""
        present = set(self.grid) | set(self.base_config())
        return [k for k in VOCABULARY if k in present]

    def configs(self) -> list[dict[str, Any]]:
        """Every trial's config, in grid order (first key varies slowest)."""
        keys = list(self.grid)
        base = self.base_config()
        return [{**base, **dict(zip(keys, combo))}
                for combo in itertools.product(*(self.grid[k] for k in keys))]

    def with_overrides(self, overrides: Mapping[str, Sequence[Any]]) -> "Study":
        """One value pins a key; several make it a grid axis over exactly those values."""
        grid, fixed = dict(self.grid), dict(self.fixed)
        for key, values in overrides.items():
            if key not in VOCABULARY:
                raise UserError(f"unknown config key {key!r} in --set; valid keys: {', '.join(VOCABULARY)}")
            grid.pop(key, None)
            fixed.pop(key, None)
            if len(values) == 1:
                fixed[key] = values[0]
            else:
                grid[key] = list(values)
        return replace(self, grid=grid, fixed=fixed)


def parse_set(text: str) -> tuple[str, list[Any]]:
    """'lr=0.01,0.1' -> ('lr', [0.01, 0.1]); values are Python literals, else strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise UserError(f"--set takes KEY=V1[,V2...], got {text!r}")
    try:
        parsed = ast.literal_eval(f"({raw},)")
        values = list(parsed)
    except (ValueError, SyntaxError):
        values = [_literal_or_string(part) for part in raw.split(",")]
    return key, values


def _literal_or_string(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(texts: Sequence[str]) -> dict[str, list[Any]]:
    overrides: dict[str, list[Any]] = {}
    for text in texts:
        key, values = parse_set(text)
        if key in overrides:
            raise UserError(f"--set {key} is given twice; give all its values in one --set {key}=V1,V2")
        overrides[key] = values
    return overrides


def available() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(name_or_path: str) -> Study:
    """A bundled study by name, or a user's study file by path."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
    else:
        path = SPACES_DIR / f"{name_or_path}.py"
        if not path.is_file():
            raise UserError(f"unknown study {name_or_path!r}; valid studies: {', '.join(available())} "
                            f"(or a path to a .py file that defines STUDY)")
    return _load_file(path)


def _load_file(path: Path) -> Study:
    spec = importlib.util.spec_from_file_location(f"tunefm_space_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"study file {path} has a syntax error at line {e.lineno}: {e.msg}") from None
    except UserError as e:
        raise UserError(f"study file {path}: {e}") from None
    except Exception as e:
        raise UserError(f"study file {path} failed to load: {type(e).__name__}: {e}") from None
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise UserError(f"study file {path} must define STUDY = tunefm.study.Study(...)"
                        + ("" if study is None else f", got {type(study).__name__}"))
    return study
