"""The `tunefm` command line: a thin click layer over the library.

    tunefm search --space fourfam --max-epochs 3 --train-size 3000 --val-size 1000
    tunefm search --space fourfam --set model=iaro1 --set lr=0.01
    tunefm search --name RUN --resume        # continue an interrupted search
    tunefm summarize [RUN] --section best --format markdown
    tunefm evaluate RUN --test-top 5
    tunefm report RUN --out report/
    tunefm replay RUN --sweep                # what ASHA would have cost and missed on a run's curves
    tunefm export RUN --mlflow-uri sqlite:///mlflow.db
    tunefm bench --models iaro1,iaro2 --batch-sizes 8,256 --device cuda
    tunefm spaces [NAME]      tunefm models
    tunefm publish-node-types  # on a `ray up` head: the node types the autoscaler may launch

Each command parses its options, calls the library and prints the answer. A
`UserError` becomes one `Error: ...` line and exit code 1 (`--debug` shows the
traceback instead); a usage mistake click catches is one `Error: ...` line and exit
code 2. A search stopped by Ctrl-C or SIGTERM says how to resume it and exits with 130
or 143.
"""

from __future__ import annotations

import functools
import json
import signal

import click
from click.core import ParameterSource

from tunefm.analysis import mlflow_export, replay, replay_report, summary, tables
from tunefm.analysis.importance import METHODS as IMPORTANCE_METHODS
from tunefm.analysis.queries import AGGREGATES, COSTS
from tunefm.analysis.summary import FORMATS, SECTIONS
from tunefm.engine.choices import FUSE_MODES, LOOPS
from tunefm.errors import Interrupted, UserError
from tunefm.run import store, writer
from tunefm.stopping import rules
from tunefm.tune.settings import SearchSettings

# Ray, torch, matplotlib and plotly are imported inside the commands that need them (each
# import says which): `summarize`, `compact` and `export` read Parquet only (pandas) and
# start in a fraction of a second. These are the package's only imports inside functions.


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


class OneLineErrors(click.Group):
    """Usage mistakes (a bad choice, a missing argument, an unknown command) print one
    `Error: ...` line like every other tunefm error; click would add the usage text and
    a --help hint above it. The message still names the valid values."""

    @staticmethod
    def _one_line(error: click.UsageError) -> None:
        if not isinstance(error, click.exceptions.NoArgsIsHelpError):  # that one *is* the help
            error.ctx = None  # no context: show() prints the Error line alone

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            self._one_line(e)
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            self._one_line(e)
            raise


def rung_options(command):
    """--grace-period and --reduction-factor, the same for a search and for `replay`."""
    command = click.option("--reduction-factor", type=int, default=3,
                           help="ASHA and MO-ASHA: keep 1/N of the trials at each rung.")(command)
    return click.option("--grace-period", type=int, default=1,
                        help="ASHA and MO-ASHA: epochs before a trial can be stopped (the first rung).")(command)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="tunefm")
def main(debug: bool) -> None:
    """tunefm: hyperparameter search for small Fashion-MNIST classifiers on Ray Tune."""


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
@click.option("--num-samples", type=int, default=None,
              help="Grid study: seeds per grid point (seed, seed+1, ...), default 1. "
                   "A study that draws configs (hyperopt, random): configs to try.  [default: 1 / the study's]")
@click.option("--concurrency", type=int, default=None,
              help="Trials at once.  [default: as resources allow; a study's own limit, 4 for hyperopt]")
@click.option("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (also torch threads).")
@click.option("--gpus-per-trial", type=float, default=None,
              help="GPU share per trial.  [default: each model's own, e.g. 0.25, where the cluster has GPUs]")
@click.option("--address", default=None, help="Ray cluster to join ('auto' on a head node).  [default: start a local Ray]")
@click.option("--storage", default=None, metavar="URI",
              help="Where Tune keeps checkpoints and TensorBoard events, shared by every node: s3://bucket/path, "
                   "gs://..., or a shared folder.  [default: the run folder's tune/]")
@click.option("--no-early-stop", is_flag=True,
              help="Train every trial all its epochs: no stopping rule.  [default: ASHA on val_acc, "
                   "or MO-ASHA on --objectives]")
@click.option("--max-failures", type=int, default=2,
              help="Retries of a trial whose worker fails (a killed process, a lost node), each from its last "
                   "checkpoint.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run --name RUN with its own options: finished trials are kept, "
                   "running ones continue from their last checkpoint.  [default: a new run]")
@rung_options
@click.option("--objectives", default=None, metavar="COL:max|min[,...]",
              help="What early stopping judges at each rung (and an optuna study optimizes): one objective is ASHA, "
                   "several are MO-ASHA (non-dominated sorting, then crowding distance), e.g. "
                   "val_acc:max,time_per_epoch_s:min; any epoch column or numeric trial column.  [default: val_acc:max]")
@click.option("--seed", type=int, default=0, help="Base seed for model init and batch order.")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1[,V2...]",
              help="Override a config key: one value pins it, several make a grid. Repeatable.  [default: none]")
@click.option("--test-top", type=int, default=None,
              help="Afterwards, evaluate each model's top K configurations on the test set (0: skip).  "
                   "[default: the study's, usually 3]")
@click.option("--loop", type=click.Choice(LOOPS), default="auto",
              help="How trials' training steps run: auto measures the candidates once per machine and shape "
                   "(tunefm bench --calibration); a fixed loop gives the same bits on every machine.")
@click.option("--fuse", type=click.Choice(FUSE_MODES), default="auto",
              help="Train trials that share a shape (model and options, batch size, optimizer, output) as one "
                   "stacked model, each still its own Tune trial. auto: on GPUs, and on CPUs where the whole study "
                   "is estimated to finish at least 1.2x faster, the start of every trial process included.")
@click.option("--group-size", type=int, default=None,
              help="Fused: trials per CPU slot or GPU, and the largest group.  [default: on CPUs the size estimated "
                   "fastest for the study, up to 16 per GPU, never more than spreading the trials needs]")
@click.option("--keep-checkpoints", type=click.Choice(["best", "all"]), default="best",
              help="best: an ended trial keeps only its best checkpoint, and after the test evaluation only each "
                   "model's top 5 configurations keep theirs (enough for `tunefm evaluate --test-top 5`). "
                   "all: every trial's best and latest.")
@user_errors
def search(**options) -> None:
    """Run a study's grid on Ray Tune and write results/<run>/ (Parquet + run.json).

    Ctrl-C (or SIGTERM) stops the trials at their last checkpoint and prints the command
    that resumes the run: `tunefm search --name RUN --resume`.
    """
    from tunefm.tune import resume, search  # Ray and torch: only for the commands that train

    context = click.get_current_context()
    given = {k for k in options if context.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if "no_early_stop" in given:  # the settings' name for it
        given = given - {"no_early_stop"} | {"early_stop"}
    given.discard("resume")
    options["early_stop"] = not options.pop("no_early_stop")
    options["sets"] = tuple(options["sets"])
    options["ray_logs"] = bool(context.find_root().params.get("debug"))  # Ray's own output only with --debug
    given.add("ray_logs")
    resuming = options.pop("resume")
    settings = SearchSettings(**options)
    try:
        outcome = resume.run(settings, given, echo=click.echo) if resuming else search.run(settings, echo=click.echo)
    except Interrupted as e:
        click.echo(f"\n{e}", err=True)
        click.echo(f"Resume with: {e.resume}", err=True)
        context.exit(128 + signal.Signals[e.signal_name].value)
    trials = outcome.trials
    click.echo("")
    click.echo(summary.render(store.load_run(outcome.run_dir), summary.SummaryOptions(sections=("best", "reference"))))
    stopped = int(trials["stopped_early"].sum())
    failed = int((trials["status"] == "ERROR").sum())
    retried = int((trials["retries"] > 0).sum())
    click.echo(f"\n{len(trials)} trials, {stopped} stopped early by {rules.label(settings.stopping_objectives())}, "
               + (f"{retried} retried after a failure, " if retried else "")
               + (f"{failed} failed (see {outcome.run_dir / 'tune'}), " if failed else "")
               + f"{int(trials['epochs'].sum())} epochs trained.")
    click.echo(f"Results: {outcome.run_dir}   (next: tunefm summarize {outcome.run_dir})")


@main.command()
@click.argument("run")
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@click.option("--test-top", type=int, default=None,
              help="Evaluate each model's top K configurations (by val acc).  [default: the run's study's, usually 3]")
@click.option("--data-dir", default=None, metavar="DIR",
              help="Fashion-MNIST IDX files.  [default: the run's, else $TUNEFM_DATA_DIR, else the cache]")
@user_errors
def evaluate(run: str, results_dir: str, test_top: int | None, data_dir: str | None) -> None:
    """Evaluate a finished or interrupted run's best trials on the test set.

    Loads each chosen trial's best-validation checkpoint, fills test_acc and test_loss in
    trials.parquet and writes confusion.parquet. RUN is a run folder, or a run name
    under --results.
    """
    import tunefm.tune.evaluate as evaluation  # torch: only to run checkpoints on the test set

    run_dir = store.resolve_run(run, results_dir)
    outcome = evaluation.run(run_dir, test_top, data_dir, echo=click.echo)
    click.echo("")
    click.echo(summary.render(store.load_run(run_dir), summary.SummaryOptions(sections=("best", "reference"))))
    click.echo(f"\n{len(outcome.evaluated)} trial(s) evaluated; results in {run_dir}")


@main.command()
@click.argument("run")
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@user_errors
def compact(run: str, results_dir: str) -> None:
    """Merge a run's epoch part files into one (a search does this when it ends; a killed one
    leaves them). RUN is a run folder, or a run name under --results."""
    run_dir = store.resolve_run(run, results_dir)
    before, after = writer.compact_run(run_dir)
    click.echo(f"{run_dir}: {before} epoch part file(s) -> {after}")


@main.command()
@click.argument("run", required=False)
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@click.option("--section", "sections", multiple=True, type=click.Choice(SECTIONS),
              help="Section to show; repeatable.  [default: all]")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
              help="Output format.")
@click.option("--metric", default="best_val_acc", help="Metric for best, grid and pareto; better high (accuracies) or low (losses, times).")
@click.option("--rows", default=None, metavar="KEY",
              help="grid and overfit: config key down the rows.  [default: lr, where it varies; else the first "
                   "key of the study's grid that varies]")
@click.option("--cols", default=None, metavar="KEY",
              help="grid and overfit: config key across the columns.  [default: batch_size, where it varies; "
                   "else the next key that varies]")
@click.option("--agg", type=click.Choice(AGGREGATES), default="mean",
              help="grid: how a cell combines its trials (seeds, other varied keys).")
@click.option("--cost", type=click.Choice(COSTS), default=None,
              help="pareto: the cost axis (lower is better). total_time_s and gpu_seconds count early stopping "
                   "as savings.  [default: the cost the run's --objectives minimized, else time_per_epoch_s]")
@click.option("--include-stopped", is_flag=True,
              help="pareto: compare trials stopped early too, at their last epoch (marked *).  [default: "
                   "only trials that trained all their epochs]")
@click.option("--trial", default=None, metavar="ID",
              help="confusion: this evaluated trial.  [default: the evaluated trial with the best val acc]")
@click.option("--importance-method", type=click.Choice(IMPORTANCE_METHODS), default="auto",
              help="importance: anova (an exact analysis of variance; needs a full-factorial grid), fanova or "
                   "ped-anova (Optuna's, for any study); auto: anova where the design allows it, else fanova.")
@user_errors
def summarize(run: str | None, results_dir: str, sections: tuple[str, ...], fmt: str, **options) -> None:
    """Best configurations, grids, hyperparameter importance, Pareto front, overfitting and confusion of a run.

    Reads only the run's Parquet files, so it also works while the search is running.
    RUN is a run folder or a run name under --results.  [default: the newest run]
    """
    run_dir = store.resolve_run(run, results_dir)
    settings = summary.SummaryOptions(sections=tuple(sections), **options)
    click.echo(summary.render(store.load_run(run_dir), settings, fmt))


@main.command()
@click.argument("run", required=False)
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Where to write.  [default: RUN/report]")
@click.option("--cost", type=click.Choice(COSTS), default=None,
              help="Cost axis of the Pareto plot (as for summarize).  [default: the cost the run's --objectives "
                   "minimized, else time_per_epoch_s]")
@click.option("--include-stopped", is_flag=True,
              help="Pareto plot: compare trials stopped early too.  [default: drawn grey, off the front]")
@click.option("--color-by", default="lr", metavar="KEY",
              help="Config key that colours the interactive learning curves (lr, batch_size, model, ...).")
@user_errors
def report(run: str | None, results_dir: str, out_dir: str | None, cost: str | None, include_stopped: bool,
           color_by: str) -> None:
    """An interactive, self-contained index.html (plotly; works offline) and PNG figures for a run.

    RUN is a run folder or a run name under --results.  [default: the newest run]
    """
    import tunefm.analysis.report as reporting  # matplotlib and plotly: only to draw a report

    run_dir = store.resolve_run(run, results_dir)
    written = reporting.write(store.load_run(run_dir), out_dir, cost=cost, color_by=color_by,
                              include_stopped=include_stopped)
    click.echo(f"Wrote {len(written.figures)} figures and {written.index}")


@main.command("replay")
@click.argument("run", required=False)
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@click.option("--scheduler", type=click.Choice(replay.SCHEDULERS), default=None,
              help="The rule to replay: asha judges the first objective, mo-asha all of them, none trains "
                   "every epoch.  [default: mo-asha for several objectives, else asha]")
@rung_options
@click.option("--objectives", default=None, metavar="COL:max|min[,...]",
              help="What the rule judges, e.g. val_acc:max,time_per_epoch_s:min.  [default: the run's own "
                   "--objectives, else val_acc:max]")
@click.option("--concurrency", type=int, default=1,
              help="Trials at once, started in the run's order; 1 replays a --concurrency 1 search exactly "
                   "(where the objectives do not depend on measured times).")
@click.option("--sweep", "sweep_settings", is_flag=True,
              help=f"Replay grace periods {', '.join(map(str, replay.SWEEP_GRACE_PERIODS))} x reduction factors "
                   f"{', '.join(map(str, replay.SWEEP_REDUCTION_FACTORS))} (within the run's epochs).  "
                   f"[default: the one setting given]")
@click.option("--json", "as_json", is_flag=True,
              help="JSON, each trial's epochs under each rule included.  [default: a table]")
@user_errors
def replay_command(run: str | None, results_dir: str, scheduler: str | None, grace_period: int, reduction_factor: int,
                   objectives: str | None, concurrency: int, sweep_settings: bool, as_json: bool) -> None:
    """Replay a stopping rule on a run's recorded curves, without training: the epochs it would
    train, its simulated wall time, the configuration it would pick and its regret, and for
    several objectives the hypervolume of its front. Best on a run made with --no-early-stop.

    RUN is a run folder or a run name under --results.  [default: the newest run]
    """
    run_dir = store.resolve_run(run, results_dir)
    curves, outcomes = replay.replay(store.load_run(run_dir), scheduler, grace_period, reduction_factor, objectives,
                                     concurrency, sweep_settings)
    if as_json:
        records = replay_report.records(curves, outcomes)
        click.echo(json.dumps(replay_report.without_nan({"run": str(run_dir), "settings": records}), indent=2,
                              default=str))
        return
    click.echo("\n".join([*replay_report.heading(curves, outcomes), "",
                           tables.text_table(replay_report.table(curves, outcomes), index=False, width=120)]))


@main.command()
@click.argument("run")
@click.option("--results", "results_dir", default="results", metavar="DIR", help="Folder holding run folders.")
@click.option("--mlflow-uri", envvar="MLFLOW_TRACKING_URI", default=None, show_default=False, metavar="URI",
              help="MLflow tracking URI: a server (http://host:5000), a database (sqlite:///mlflow.db) or a folder "
                   "(file:///path/mlruns).  [default: $MLFLOW_TRACKING_URI]")
@click.option("--experiment", default=None, metavar="NAME",
              help="MLflow experiment to write into (created if missing).  [default: tunefm/<study>]")
@user_errors
def export(run: str, results_dir: str, mlflow_uri: str | None, experiment: str | None) -> None:
    """Export a run to MLflow: a parent run for the study, a nested run per trial with every
    epoch's metrics (step = epoch), its test metrics and confusion matrix. Exporting again
    updates those runs instead of adding new ones. Needs MLflow: pip install -e ".[mlflow]".
    RUN is a run folder, or a run name under --results."""
    if not mlflow_uri:
        raise UserError("give --mlflow-uri URI (or set MLFLOW_TRACKING_URI): a tracking server (http://host:5000), "
                        "a database (sqlite:///mlflow.db) or a folder (file:///path/mlruns)")
    run_dir = store.resolve_run(run, results_dir)
    mlflow_export.export(run_dir, mlflow_uri, experiment, echo=click.echo)


def comma_list(convert):
    """A click callback: repeated and comma-separated values as one flat list."""

    def parse(ctx, param, values):
        items = [v.strip() for value in values for v in value.split(",") if v.strip()]
        try:
            return [convert(v) for v in items]
        except ValueError:
            raise click.BadParameter(f"expected {convert.__name__} values separated by commas, got {','.join(values)!r}")
    return parse


@main.command()
@click.option("--models", "model_names", multiple=True, callback=comma_list(str), metavar="M1,M2",
              help="Models to measure.  [default: iaro1,iaro2,iaro3,iaro4]")
@click.option("--batch-sizes", multiple=True, callback=comma_list(int), metavar="B1,B2",
              help="Batch sizes.  [default: 8,32,256]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where to train.  [default: cuda when available, else cpu]")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Training time per model and batch size.")
@click.option("--cpus-per-trial", type=float, default=1.0, show_default=True,
              help="CPUs a trial gets (also torch threads), as in tunefm search.")
@click.option("--train-size", type=int, default=50_000, show_default=True,
              help="A trial's training images, for its data footprint.")
@click.option("--val-size", type=int, default=10_000, show_default=True,
              help="A trial's validation images, for its data footprint.")
@click.option("--data-dir", default=None, metavar="DIR", help="Fashion-MNIST IDX files.  [default: $TUNEFM_DATA_DIR, else the cache]")
@click.option("--loop", type=click.Choice(LOOPS), default="auto", show_default=True,
              help="Training loop to time; auto: the one calibration measured fastest here (cached).")
@click.option("--calibration", is_flag=True,
              help="Show what calibration has measured on this machine (the cache) and exit.  "
                   "[default: measure training speed]")
@click.option("--refresh", is_flag=True,
              help="Measure the loops and fused group sizes of --models x --batch-sizes again, replacing the "
                   "cache's entries, and show them.  [default: use the cache, measuring only what is missing]")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="Output format.")
@user_errors
def bench(model_names, batch_sizes, device, seconds, cpus_per_trial, train_size, val_size, data_dir, loop,
          calibration, refresh, fmt) -> None:
    """Measure training speed and peak memory per model and batch size here, and advise
    how many trials share one GPU (or node) and the GPU fraction to give each. With
    --calibration or --refresh: the per-machine choice of training loop and fused group size."""
    from tunefm import bench_report  # torch: only to measure training
    from tunefm.engine import bench, calibrate, loops  # torch: only to measure training

    if calibration or refresh:
        shapes = None
        if refresh:
            chosen_models = list(model_names) or list(bench.DEFAULT_MODELS)
            chosen_batches = list(batch_sizes) or list(bench.DEFAULT_BATCH_SIZES)
            bench.check(chosen_models, chosen_batches, seconds)
            shapes = calibrate.refresh(chosen_models, chosen_batches, bench.resolve_device(device),
                                       max(1, int(cpus_per_trial)),
                                       on_shape=lambda shape: click.echo(f"calibrated {shape}", err=True))
        contents = calibrate.cached()
        if fmt == "json":
            click.echo(json.dumps({"cache": str(calibrate.cache_dir() / calibrate.CACHE_FILE), "machines": contents},
                                  indent=2))
        else:
            click.echo(bench_report.calibration_text(contents, shapes))
        return
    if cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be > 0, got {cpus_per_trial}")
    if train_size < 1 or val_size < 1:
        raise UserError(f"--train-size and --val-size must be >= 1, got {train_size} and {val_size}")
    bench.check(list(model_names) or list(bench.DEFAULT_MODELS), list(batch_sizes), seconds)
    machine = bench.Machine.here(bench.resolve_device(device), cpus_per_trial)
    loops.check(loop, bench.resolve_device(device))
    rows = bench.measure(list(model_names) or list(bench.DEFAULT_MODELS),
                             list(batch_sizes) or list(bench.DEFAULT_BATCH_SIZES), machine, seconds,
                             data_dir, trial_images=train_size + val_size,
                             on_row=lambda r: click.echo(f"measured {r.model} batch {r.batch_size} ({r.loop}): "
                                                         f"{r.samples_per_s:,.0f} samples/s", err=True), loop=loop)
    packings = bench.advise(rows, machine)
    if fmt == "json":
        click.echo(json.dumps({"machine": machine.record(), "rows": [r.record() for r in rows],
                               "packing": [p.record() for p in packings]}, indent=2))
    else:
        click.echo(bench_report.bench_text(rows, packings, machine))


@main.command()
@click.argument("name", required=False)
@user_errors
def spaces(name: str | None) -> None:
    """List the bundled studies, or show study NAME (a name or a .py file) in full."""
    from tunefm import catalog  # Ray and torch: studies' spaces and the model registry

    if name:
        click.echo(catalog.describe_study(name))
    else:
        click.echo(tables.text_table(catalog.studies_table(), index=False, width=120))
        click.echo("\nSearchers (a study's `searcher=`):\n" + catalog.searchers_text())
        click.echo("\nRun one: tunefm search --space NAME   Details: tunefm spaces NAME")


@main.command("publish-node-types")
@click.argument("config", default="~/ray_bootstrap_config.yaml")
@click.option("--address", default=None, help="The Ray cluster's address.  [default: the one on this machine]")
@user_errors
def publish_node_types(config: str, address: str | None) -> None:
    """On a `ray up` head node: tell Ray's GCS which worker node types the autoscaler may launch,
    so that a search waits for them instead of refusing trials the running nodes cannot hold.
    The head start commands of cluster/config.yaml and cluster/local.yaml run it; CONFIG is the
    config `ray up` copied to the head."""
    from tunefm.tune import cluster  # Ray: the cluster's GCS

    for name, resources, low, high in cluster.publish_node_types(config, address):
        shown = ", ".join(f"{key} {value:g}" for key, value in resources.items())
        click.echo(f"Node type {name}: {shown}; {low} to {high} node(s)")


@main.command()
@user_errors
def models() -> None:
    """List the registered models: family, parameters, options and source seed."""
    from tunefm import catalog  # torch: the model registry counts parameters

    click.echo(catalog.models_text())


if __name__ == "__main__":
    main()
