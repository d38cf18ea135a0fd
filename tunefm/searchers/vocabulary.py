"""The config vocabulary: every shared key a trial config may hold, its check and its
default, and the checks of a whole config (its model's own options included).

    vocabulary.validate_value("lr", 0.0)    # UserError: lr must be a number > 0, got lr=0.0

Study files, `--set` values and the searchers' spaces are all checked here.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

from tunefm.engine import models
from tunefm.errors import UserError


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_model(value):
    models.get(value)  # raises UserError listing the valid names


def _check(condition: Callable[[Any], bool], valid: str) -> Callable[[Any], None]:
    def check(value):
        if not condition(value):
            raise ValueError(valid)
    return check


# key -> (validator, default when the study leaves it out; None: no default)
VOCABULARY: dict[str, tuple[Callable[[Any], None], Any]] = {
    "model": (_check_model, None),
    "lr": (_check(lambda v: _is_number(v) and v > 0, "a number > 0"), None),
    "batch_size": (_check(lambda v: is_int(v) and v >= 1, "an integer >= 1"), None),
    "optimizer": (_check(lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'"), "sgd"),
    "momentum": (_check(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"), 0.0),
    "weight_decay": (_check(lambda v: _is_number(v) and v >= 0, "a number >= 0"), 0.0),
    "init": (_check(lambda v: v in models.INITS, "one of " + ", ".join(repr(i) for i in models.INITS)), "default"),
    "augment": (_check(lambda v: isinstance(v, bool), "true or false"), False),
    "output": (_check(lambda v: v in ("softmax", "sigmoid"), "'softmax' or 'sigmoid'"), "softmax"),
    "lr_decay": (_check(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"), 1.0),
    "max_epochs": (_check(lambda v: is_int(v) and v >= 1, "an integer >= 1"), None),
    "seed": (_check(lambda v: is_int(v) and v >= 0, "an integer >= 0"), 0),
}
REQUIRED_KEYS = ("model", "lr", "batch_size")


def valid_keys() -> str:
    return f"{', '.join(VOCABULARY)}; model options: {', '.join(models.option_keys())}"


def validate_value(key: str, value: Any) -> None:
    """Check a shared key's value, or that a model-specific key exists (its value is the model's to check)."""
    if key in VOCABULARY:
        check, _ = VOCABULARY[key]
        try:
            check(value)
        except ValueError as e:
            raise UserError(f"{key} must be {e}, got {key}={value!r}") from None
    elif key not in models.option_keys():
        raise UserError(f"unknown config key {key!r}; valid keys: {valid_keys()}")


def check_model_options(config: Mapping[str, Any]) -> None:
    """Every model-specific key of a trial config against the options its model takes."""
    models.get(config["model"]).check_options({k: v for k, v in config.items() if k not in VOCABULARY})


def validate_config(config: Mapping[str, Any]) -> None:
    """A whole trial config: every shared key's value, and the model's own options."""
    for key, value in config.items():
        validate_value(key, value)
    check_model_options(config)
