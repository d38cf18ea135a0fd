"""The config keys the engine itself reads, as plain Python (no torch): how many epochs a
trial runs, and which keys the members of one fused group may differ in.

Torch-free so that the run folder's code and the Ray driver can use it without loading torch.
"""

from __future__ import annotations

from typing import Any, Mapping

# Config keys that change no tensor's shape: trials may differ in them and still train as one
# fused group (`fused.shape_key`: every other key must match).
PER_MEMBER_KEYS = frozenset({"lr", "momentum", "weight_decay", "lr_decay", "seed", "init", "augment",
                             "max_epochs"})


def is_missing(value: Any) -> bool:
    """None, NaN (NaT), or pandas' NA (which a Parquet row holds for a config key a trial lacks)."""
    if value is None:
        return True
    try:
        return bool(value != value)  # only NaN and NaT differ from themselves
    except TypeError:  # pd.NA: its comparison is NA, which has no truth value
        return True


def rough_shape(config: Mapping[str, Any]) -> str:
    """A trial's shape as far as it shows without the model registry (which needs torch): its
    config less the per-member keys. Trials with equal rough shapes share a `fused.shape_key`;
    the coordinator uses it to put same-shape trials on the same executor."""
    return repr(sorted((k, repr(v)) for k, v in config.items() if k not in PER_MEMBER_KEYS))


def epoch_limit(config: Mapping[str, Any], max_epochs: int) -> int:
    """The epochs a trial runs if nothing stops it: the study's, or fewer by its own
    `max_epochs` config key (null in a Parquet row of a trial without one)."""
    own = config.get("max_epochs")
    return max_epochs if is_missing(own) else min(max_epochs, int(own))
