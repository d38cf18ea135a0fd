"""The options of one search (`tunefm search`), as one frozen dataclass, and their checks.

    settings = SearchSettings(space="fourfam", max_epochs=3, train_size=3000, val_size=1000)
    settings.validate()     # a UserError naming the first bad option

Plain Python: the CLI builds it at start-up without loading Ray or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunefm.engine import choices
from tunefm.errors import UserError
from tunefm.run import checkpoints
from tunefm.stopping import objectives


@dataclass(frozen=True)
class SearchSettings:
    """Options of one search; defaults match the CLI's."""

    space: str = "fourfam"
    name: str | None = None  # default: <space>-<timestamp>
    results_dir: str = "results"
    data_dir: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    max_epochs: int | None = None  # default: the study's
    num_samples: int | None = None  # grid: seeds per grid point (1); hyperopt, random: configs to try (the study's)
    concurrency: int | None = None  # default: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # default: each model's own fraction, where GPUs exist
    address: str | None = None  # default: start a local Ray
    storage: str | None = None  # default: checkpoints in the run folder; a cluster needs a shared URI
    early_stop: bool = True
    max_failures: int = 2  # retries of a trial whose worker fails, each from its last checkpoint
    grace_period: int = 1
    reduction_factor: int = 3
    objectives: str | None = None  # what the stopping rule (and an optuna searcher) judges; default val_acc:max
    seed: int = 0
    sets: tuple[str, ...] = field(default_factory=tuple)
    test_top: int | None = None  # configs per model evaluated on the test set afterwards (the study's); 0: none
    flush_interval_s: float = 5.0
    ray_logs: bool = False  # Ray's own worker and raylet output in the terminal (--debug)
    loop: str = "auto"  # how trials' steps run (loops.py): measured per machine and shape, or pinned
    fuse: str = "auto"  # train same-shape trials as one stacked model (placement.py): auto | on | off
    group_size: int | None = None  # fused: trials per CPU slot or GPU (default: calibrated / 16 per GPU)
    keep_checkpoints: str = "best"  # retention.py: best | all

    def stopping_objectives(self) -> tuple[objectives.Objective, ...]:
        """--objectives, parsed: ASHA judges one, MO-ASHA several (default: val_acc:max)."""
        return objectives.parse(self.objectives or "val_acc:max")

    def resume_changes(self) -> dict:
        """The options a resume may change (the rest are the run's own, from its run.json)."""
        return {"address": self.address, "data_dir": self.data_dir, "max_failures": self.max_failures}

    def validate(self) -> None:
        checks = [
            (self.max_epochs is None or self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}"),
            (self.num_samples is None or self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.concurrency is None or self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}"),
            (self.gpus_per_trial is None or self.gpus_per_trial >= 0,
             f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}"),
            (self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}"),
            (self.grace_period >= 1, f"--grace-period must be >= 1, got {self.grace_period}"),
            (self.reduction_factor >= 2, f"--reduction-factor must be >= 2, got {self.reduction_factor}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.test_top is None or self.test_top >= 0, f"--test-top must be >= 0, got {self.test_top}"),
            (self.group_size is None or self.group_size >= 2, f"--group-size must be >= 2, got {self.group_size}"),
            (self.name is None or (self.name and "/" not in self.name and self.name not in (".", "..")),
             f"--name must be a plain folder name, got {self.name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.stopping_objectives()
        choices.check_loop(self.loop)
        choices.check_fuse(self.fuse)
        checkpoints.check_policy(self.keep_checkpoints)
