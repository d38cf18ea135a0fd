"""Studies: what to search. A study is a grid (or a space to draw from) over config keys.

A study lives in a Python module that defines `STUDY`, either one of the bundled
`search_spaces/` modules (by name) or a user's own file (by path):

    study = study.load("fourfam")             # search_spaces/fourfam.py
    study = study.load("./my_space.py")
    study = study.with_overrides({"model": ["iaro1"], "lr": [0.01]})
    study.num_trials                          # 7

Searchers (`tunefm/searchers/`, one module each):
- "grid" (default): every combination of `grid` values, crossed with each of
  `variants` (explicit partial configs, for comparisons that are not a product,
  such as a baseline against a tuned model), each with `fixed` added.
- "hyperopt": Tree-structured Parzen Estimators (Ray Tune's `HyperOptSearch`) draw
  `num_samples` configs from `space`, a dict of Ray Tune distributions
  (`tune.loguniform(1e-5, 1e-2)`, `tune.choice([32, 64])`); `points_to_evaluate`
  are tried first.
- "random": `num_samples` independent draws from `space`, seeded by --seed;
  `points_to_evaluate` are tried first.
- "optuna": Optuna's `sampler` ("tpe", "gp", "cmaes" or "nsga2") draws `num_samples`
  configs from `space` on --objectives (one or several), seeded by --seed.

Config vocabulary (a trial's config is a flat dict; see DESIGN.md). Shared keys:

    model         a registered model name (`tunefm models`)
    lr            learning rate, > 0
    batch_size    integer >= 1
    optimizer     sgd | adam
    momentum      0 <= momentum < 1 (SGD only)
    weight_decay  L2 strength, >= 0
    init          default | xavier_uniform | xavier_normal | kaiming_uniform (biases zero)
    augment       true: random crop (up to 2 px shift) and horizontal flip of every training image
    output        softmax (cross-entropy) | sigmoid (binary cross-entropy on one-hot targets)
    lr_decay      factor per optimizer step, 0 < d <= 1: lr_k = lr * d**k (1: constant)
    max_epochs    this trial's epochs when fewer than the study's
    seed          integer >= 0: model init, batch order and augmentation

Model-specific keys (dropout, batch_norm, kernel sizes, ...) go to the model's factory,
which accepts only its own (`tunefm models` lists them). A study may also carry the
figures its source seed `reported`, which `tunefm summarize` shows beside the run's.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from tunefm import searchers
from tunefm.engine import models
from tunefm.errors import UserError
from tunefm.run.columns import REPORTABLE
from tunefm.searchers import distributions
from tunefm.searchers.base import SEARCHER_FIELDS
from tunefm.searchers.vocabulary import (
    REQUIRED_KEYS,
    VOCABULARY,
    check_model_options,
    is_int,
    valid_keys,
    validate_value,
)

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
DEFAULT_TEST_TOP = 3


@dataclass(frozen=True)
class Reported:
    """Figures the source seed reported, for the trials matching `where`.

    `figures` maps a trials.parquet column (best_val_acc, test_acc, total_time_s, ...)
    to the seed's value. `chosen` is the configuration the seed picked among the
    matching trials; `tunefm summarize` shows this run's pick (best mean validation
    accuracy) beside it. `epochs` is how long the seed trained for these figures, where
    it says: a figure after 100 epochs is not the same figure after 10, so the summary
    shows it beside the epochs this run's pick trained.
    """

    where: Mapping[str, Any]
    figures: Mapping[str, float]
    chosen: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    epochs: int | None = None

    def record(self) -> dict[str, Any]:
        return {"where": dict(self.where), "figures": dict(self.figures), "chosen": dict(self.chosen),
                "note": self.note, "epochs": self.epochs}


@dataclass(frozen=True)
class Study:
    """A search over configs: a grid (times variants), or a space that a searcher draws from."""

    name: str
    description: str
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int = 100
    source: str = ""  # the seed study it reproduces
    variants: Sequence[Mapping[str, Any]] = ()  # grid searcher: each crossed with the grid
    searcher: str = "grid"  # a name in tunefm.searchers.REGISTRY
    space: Mapping[str, Any] = field(default_factory=dict)  # hyperopt, random: Ray Tune distributions
    num_samples: int | None = None  # hyperopt, random: configs to try
    points_to_evaluate: Sequence[Mapping[str, Any]] = ()  # hyperopt, random: tried first
    initial_points: int = 10  # hyperopt, optuna: random configs before the model takes over (nsga2: population)
    sampler: str = "tpe"  # optuna: tpe | gp | cmaes | nsga2
    concurrency: int | None = None  # default limit on trials at once (TPE learns from finished ones)
    test_top: int = DEFAULT_TEST_TOP  # configs per model evaluated on the test set afterwards
    reported: Sequence[Reported] = ()
    notes: str = ""  # the study module's docstring

    def __post_init__(self):
        self.validate()

    @property
    def search(self) -> searchers.Searcher:
        """The searcher named by `searcher` (tunefm/searchers/)."""
        return searchers.get(self.searcher)

    def validate(self) -> None:
        where = f"study {self.name!r}"
        try:
            search = self.search
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if not self.grid and not self.fixed and not self.variants and not self.space:
            raise UserError(f"{where} has an empty grid: give at least one key")
        search.validate(self, where)
        unread = [name for name in SEARCHER_FIELDS if name not in search.fields and self._is_set(name)]
        if unread:
            names = [repr(s) for s in searchers.taking(unread[0])]
            takers = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
            raise UserError(f"{where}: {', '.join(unread)} need searcher={takers}")
        for key, value in self.fixed.items():
            validate_value(key, value)
        groups = {"grid": set(self.grid), "fixed": set(self.fixed), "space": set(self.space)}
        for (a, keys_a), (b, keys_b) in itertools.combinations(groups.items(), 2):
            if keys_a & keys_b:
                raise UserError(f"{where}: {', '.join(sorted(keys_a & keys_b))} is both in {a} and {b}")
        if not is_int(self.max_epochs) or self.max_epochs < 1:
            raise UserError(f"max epochs must be an integer >= 1, got {self.max_epochs!r}")
        if not is_int(self.test_top) or self.test_top < 0:
            raise UserError(f"{where}: test_top must be an integer >= 0, got {self.test_top!r}")
        present = set(self.grid) | set(self.fixed) | set(self.space)
        for variant in self.variants or [{}]:
            missing = [k for k in REQUIRED_KEYS if k not in present | set(variant)]
            if missing:
                raise UserError(f"{where} does not set {', '.join(missing)}")
        for config in search.configs_to_check(self):  # each value is checked above; here, model x option
            check_model_options(config)
            if config.get("max_epochs", 1) > self.max_epochs:
                raise UserError(f"{where}: max_epochs={config['max_epochs']} in a config exceeds the study's "
                                f"max_epochs={self.max_epochs}")
        self._validate_reported(where)

    def _is_set(self, name: str) -> bool:
        """A searcher field is given: not empty, and not its default (`initial_points` has one)."""
        value, declared = getattr(self, name), next(f for f in fields(self) if f.name == name)
        return bool(value) and value != declared.default

    def _validate_reported(self, where: str) -> None:
        for row in self.reported:
            if not isinstance(row, Reported):
                raise UserError(f"{where}: reported must hold tunefm.study.Reported(...) entries, got {row!r}")
            for key, value in [*row.where.items(), *row.chosen.items()]:
                validate_value(key, value)
            if row.epochs is not None and not (isinstance(row.epochs, int) and row.epochs >= 1):
                raise UserError(f"{where}: reported epochs must be an integer >= 1 (or None: not stated), "
                                f"got {row.epochs!r}")
            unknown = [k for k in row.figures if k not in REPORTABLE]
            if unknown or not row.figures:
                raise UserError(f"{where}: reported figures must be trials.parquet columns ({', '.join(REPORTABLE)}), "
                                f"got {', '.join(unknown) or 'none'}")

    @property
    def num_trials(self) -> int:
        return self.search.num_trials(self)

    def base_config(self) -> dict[str, Any]:
        """Defaults for shared keys the study leaves out, then its fixed values."""
        varied = set(self.grid) | set(self.space) | {k for v in self.variants for k in v}
        defaults = {k: d for k, (_, d) in VOCABULARY.items() if d is not None and k not in varied}
        return {**defaults, **self.fixed}

    def config_keys(self) -> list[str]:
        """Every key a trial's config has: shared keys in vocabulary order, then model options."""
        present = set(self.grid) | set(self.base_config()) | set(self.space) | {k for v in self.variants for k in v}
        return [k for k in VOCABULARY if k in present] + sorted(present - set(VOCABULARY))

    def configs(self) -> list[dict[str, Any]]:
        """Every trial's config, in order (a grid study's; variants slowest, then grid keys, first key slowest)."""
        configs = self.search.configs(self)
        if configs is None:
            raise ValueError(f"a {self.searcher} study's configs are drawn during the search")
        return configs

    def with_overrides(self, overrides: Mapping[str, Sequence[Any]]) -> "Study":
        """One value pins a key; several make it a grid axis (a tune.choice in a drawn space) over exactly those values."""
        parts = {"grid": dict(self.grid), "fixed": dict(self.fixed), "space": dict(self.space),
                 "variants": [dict(v) for v in self.variants],
                 "points_to_evaluate": [dict(p) for p in self.points_to_evaluate]}
        for key, values in overrides.items():
            if key not in VOCABULARY and key not in models.option_keys():
                raise UserError(f"unknown config key {key!r} in --set; valid keys: {valid_keys()}")
            for container in (parts["grid"], parts["fixed"], parts["space"], *parts["variants"],
                              *parts["points_to_evaluate"]):
                container.pop(key, None)
            if len(values) == 1:
                parts["fixed"][key] = values[0]
            else:
                self.search.vary(parts, key, list(values))
        parts["variants"] = [v for v in parts["variants"] if v]
        return replace(self, **parts)

    def with_max_epochs(self, max_epochs: int) -> "Study":
        """Every trial capped at `max_epochs`, per-trial max_epochs included."""
        def cap(config: Mapping[str, Any]) -> dict[str, Any]:
            return {**config, **({"max_epochs": min(config["max_epochs"], max_epochs)} if "max_epochs" in config else {})}

        grid = dict(self.grid)
        if "max_epochs" in grid:
            grid["max_epochs"] = sorted({min(v, max_epochs) for v in grid["max_epochs"]})
        return replace(self, max_epochs=max_epochs, fixed=cap(self.fixed), grid=grid,
                       variants=[cap(v) for v in self.variants])

    def record(self) -> dict[str, Any]:
        """The study as plain data, for run.json (no Ray objects, no code)."""
        return {
            "name": self.name, "source": self.source, "description": self.description,
            "searcher": self.searcher, "grid": dict(self.grid), "variants": [dict(v) for v in self.variants],
            "fixed": dict(self.fixed), "space": {k: distributions.describe(d) for k, d in self.space.items()},
            **({"sampler": self.sampler} if "sampler" in self.search.fields else {}),
            "points_to_evaluate": [dict(p) for p in self.points_to_evaluate],
            "max_epochs": self.max_epochs, "num_trials": self.num_trials, "test_top": self.test_top,
            "reported": [r.record() for r in self.reported],
        }


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
    return key, [_bool_word(v) for v in values]


def _literal_or_string(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _bool_word(value: Any) -> Any:
    """--set augment=true works as well as augment=True."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def parse_sets(texts: Sequence[str]) -> dict[str, list[Any]]:
    overrides: dict[str, list[Any]] = {}
    for text in texts:
        key, values = parse_set(text)
        if key in overrides:
            raise UserError(f"--set {key} is given twice; give all its values in one --set {key}=V1,V2")
        overrides[key] = values
    return overrides


def available() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in SPACES_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(name_or_path: str) -> Study:
    """A bundled study by name, or a user's study file by path."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
    else:
        path = SPACES_DIR / f"{name_or_path.replace('-', '_')}.py"
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
    return study if study.notes else replace(study, notes=(module.__doc__ or "").strip())
