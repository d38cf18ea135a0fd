"""The `tunefm` command line: a thin click layer over the library.

    tunefm search --space fourfam --max-epochs 3 --train-size 3000 --val-size 1000
    tunefm search --space fourfam --set model=iaro1 --set lr=0.01

Each command parses its options, calls the library and prints the answer. A
`UserError` becomes one `Error: ...` line and exit code 1 (`--debug` shows the
traceback instead).
"""

from __future__ import annotations

import functools

import click
import pandas as pd

from tunefm import analysis, models
from tunefm.errors import UserError


def user_errors(command):
    """Turn UserError into click's one-line `Error: ...` with exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as e:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise click.ClickException(str(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="tunefm")
def main(debug: bool) -> None:
    """tunefm: hyperparameter search for small Fashion-MNIST classifiers on Ray Tune."""


def _format_best(trials: pd.DataFrame) -> str:
    best = analysis.best_per_model(trials)
    if best.empty:
        return "No trial reported a result."
    table = pd.DataFrame({
        "model": best["model"],
        "val acc": best["best_val_acc"].map("{:.4f}".format),
        "lr": best["lr"],
        "batch size": best["batch_size"],
        "epochs run": best["epochs"],
        "trial": best["trial_id"],
    })
    return table.to_string(index=False)


@main.command()
@click.option("--space", default="fourfam", metavar="NAME|PATH",
              help="Study: a module name in search_spaces/ or a path to a .py file defining STUDY.")
@click.option("--name", default=None, metavar="RUN", help="Run folder name.  [default: <space>-<timestamp>]")
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@click.option("--data-dir", default=None, metavar="DIR",
              help="Fashion-MNIST IDX files.  [default: $TUNEFM_DATA_DIR, else ~/.cache/tunefm/fashion-mnist]")
@click.option("--train-size", type=int, default=None, help="Training images.  [default: 60000 - val size]")
@click.option("--val-size", type=int, default=10_000, help="Validation images, split from the training set.")
@click.option("--test-size", type=int, default=None, help="Test images.  [default: all 10000]")
@click.option("--max-epochs", type=int, default=None, help="Epochs per trial.  [default: the study's]")
@click.option("--num-samples", type=int, default=1, help="Seeds per grid point (seed, seed+1, ...).")
@click.option("--concurrency", type=int, default=None, help="Trials at once.  [default: as resources allow]")
@click.option("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (also torch threads).")
@click.option("--gpus-per-trial", type=float, default=None,
              help="GPU share per trial.  [default: each model's own, e.g. 0.25, where the cluster has GPUs]")
@click.option("--address", default=None, help="Ray cluster to join ('auto' on a head node).  [default: start a local Ray]")
@click.option("--no-early-stop", is_flag=True, help="Run the full grid without ASHA.  [default: ASHA on val_acc]")
@click.option("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped.")
@click.option("--reduction-factor", type=int, default=3, help="ASHA: keep 1/N of trials at each rung.")
@click.option("--seed", type=int, default=0, help="Base seed for model init and batch order.")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1[,V2...]",
              help="Override a config key: one value pins it, several make a grid. Repeatable.  [default: none]")
@user_errors
def search(**options) -> None:
    """Run a study's grid on Ray Tune and write results/<run>/ (Parquet + run.json)."""
    from tunefm.search import SearchSettings, run

    early_stop = not options.pop("no_early_stop")
    settings = SearchSettings(early_stop=early_stop, **{**options, "sets": tuple(options["sets"])})
    outcome = run(settings, echo=click.echo)
    trials = outcome.trials
    click.echo("")
    click.echo("Best trial per model:")
    click.echo(_format_best(trials))
    stopped = int(trials["stopped_early"].sum())
    failed = int((trials["status"] == "ERROR").sum())
    click.echo(f"\n{len(trials)} trials, {stopped} stopped early by ASHA, "
               + (f"{failed} failed (see {outcome.run_dir / 'tune'}), " if failed else "")
               + f"{int(trials['epochs'].sum())} epochs trained.")
    click.echo(f"Results: {outcome.run_dir}")


if __name__ == "__main__":
    main()
