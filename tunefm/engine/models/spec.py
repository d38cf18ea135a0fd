"""What a registered model is: its spec (family, source seed, default GPU fraction, the
options its factory takes, each with a default and a check), weight initialisation and
parameter counting. The model files build specs from these; `models/__init__.py` registers them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping

from torch import nn

from tunefm.errors import UserError


@dataclass(frozen=True)
class Option:
    """One model-specific config key: its default, what is valid, and a check."""

    default: Any
    valid: str  # e.g. "a number in [0, 1)"
    check: Callable[[Any], bool]
    help: str = ""


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def dropout_option(default: float, where: str) -> Option:
    return Option(default, "a number in [0, 1)",
                  lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < 1,
                  f"dropout probability {where}")


def batch_norm_option(default: bool, where: str = "after every convolution") -> Option:
    return Option(default, "true or false", lambda v: isinstance(v, bool), f"batch norm {where}")


def int_option(default: int, low: int, help: str, odd: bool = False) -> Option:
    valid = f"an odd integer >= {low}" if odd else f"an integer >= {low}"
    return Option(default, valid, lambda v: _is_int(v) and v >= low and (not odd or v % 2 == 1), help)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    source: str  # the seed file it comes from
    gpu_fraction: float  # default share of one GPU for a trial of this model
    factory: Callable[..., nn.Module]  # called with every option as a keyword
    options: Mapping[str, Option] = field(default_factory=dict)
    description: str = ""
    # A rule across options (all of them, defaults filled): None if they fit, else what is wrong.
    combination: Callable[[Mapping[str, Any]], str | None] | None = None

    @cached_property
    def params(self) -> int:
        """Parameter count with default options."""
        return count_params(self.build())

    def check_option(self, key: str, value: Any) -> None:
        if key not in self.options:
            takes = f"its options: {', '.join(self.options)}" if self.options else "it takes no options"
            raise UserError(f"model {self.name} does not take {key!r}; {takes}")
        option = self.options[key]
        if not option.check(value):
            raise UserError(f"{key} must be {option.valid} for model {self.name}, got {key}={value!r}")

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option's key and value, then the rule across them; returns all options, defaults filled."""
        for key, value in options.items():
            self.check_option(key, value)
        complete = {**{k: o.default for k, o in self.options.items()}, **options}
        problem = self.combination(complete) if self.combination else None
        if problem:
            raise UserError(f"model {self.name}: {problem}")
        return complete

    def build(self, options: Mapping[str, Any] | None = None) -> nn.Module:
        return self.factory(**self.check_options(options or {}))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform")


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every conv and linear weight by `scheme`, biases to zero.

    'default' keeps PyTorch's own initialisation. Kaiming uses the ReLU gain, as every
    hidden layer here is followed by a ReLU.
    """
    if scheme == "default":
        return model
    initialise = {
        "xavier_uniform": nn.init.xavier_uniform_,
        "xavier_normal": nn.init.xavier_normal_,
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    }[scheme]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            initialise(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model
