"""`tunefm replay` on runs written through the real RunWriter: MO-ASHA's epochs, front and
hypervolume on a table worked by hand, the simulated wall time, the sweep, and the error
for a run that lacks the epochs a rule needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunefm.analysis import replay
from tunefm.cli import main
from tunefm.run import store
from tunefm.run.writer import RunWriter

# trial: (val_acc at epoch 1, at epoch 2, seconds per epoch); trial ids t0..t5 in this order
TABLE = {"A": (0.80, 0.82, 1.0), "B": (0.70, 0.72, 2.0), "C": (0.90, 0.92, 3.0), "D": (0.85, 0.87, 0.5),
         "E": (0.60, 0.62, 0.4), "F": (0.84, 0.95, 0.6)}
ID = {name: f"t{i}" for i, name in enumerate(TABLE)}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def hand_run(run_dir, epochs: dict[str, int] | None = None):
    """Every trial of TABLE trained 2 epochs (or `epochs[name]`), as a --no-early-stop search writes them."""
    run_dir.mkdir(parents=True)
    writer = RunWriter(run_dir, max_epochs=2, config_keys=["model", "lr"])
    for i, (name, (first, second, seconds)) in enumerate(TABLE.items()):
        config = {"model": "iaro1", "lr": 0.001 * (i + 1)}
        for epoch, acc in enumerate([first, second][: (epochs or {}).get(name, 2)], start=1):
            writer.add_epoch(ID[name], config, {
                "epoch": epoch, "val_acc": acc, "train_acc": acc, "train_loss": 1 - acc, "val_loss": 1.1 - acc,
                "epoch_time_s": seconds, "train_time_s": seconds, "time_total_s": seconds * epoch, "params": 100})
        writer.set_status(ID[name], config, "TERMINATED")
    writer.flush()
    store.write_json({"study": {"name": "hand", "max_epochs": 2}, "options": {}, "status": "completed"},
                     run_dir / store.RUN_FILE)
    return run_dir


def union_area(points, reference):
    """The area of the union of the rectangles from `reference` to each point, by vertical strips."""
    xs = sorted({reference[0], *(p[0] for p in points)})
    area = 0.0
    for left, right in zip(xs, xs[1:]):
        top = max((p[1] for p in points if p[0] >= right), default=reference[1])
        area += (right - left) * max(0.0, top - reference[1])
    return area


def test_mo_asha_replay_on_a_table_worked_by_hand(tmp_path):
    """At the first rung (reduction factor 2) the trials meet MO-ASHA on (val_acc, s/epoch) as in
    test_stopping's worked rung: B and F stop after epoch 1, the rest train both epochs. At the
    end the rule's front is {C, D, E} (A: D dominates it); the full run's is {D, E, F}, since F
    reaches 0.95 in its second epoch."""
    curves = replay.Curves.of(store.load_run(hand_run(tmp_path / "run")))
    setting = replay.Setting("mo-asha", 1, 2, replay.parse("val_acc:max,time_per_epoch_s:min"), concurrency=1)
    outcome = replay.simulate(curves, setting)
    assert outcome.epochs == {ID[n]: (1 if n in "BF" else 2) for n in TABLE}
    assert outcome.stopped_at == {ID["B"]: 1, ID["F"]: 1}
    assert set(outcome.front) == {ID[n] for n in "CDE"} and set(outcome.full_front) == {ID[n] for n in "DEF"}
    # one at a time: the epochs the rule trains, end to end (A 2 x 1.0, B 1 x 2.0, C 2 x 3.0, ...)
    assert outcome.wall_s == pytest.approx(2 * 1.0 + 2.0 + 2 * 3.0 + 2 * 0.5 + 2 * 0.4 + 0.6)
    assert (outcome.pick, outcome.pick_val_acc, outcome.best, outcome.best_val_acc) == (ID["C"], 0.92, ID["F"], 0.95)
    assert outcome.regret == pytest.approx(0.03)

    # hypervolume by hand: val_acc over [0.62, 0.95] and -seconds over [-3.0, -0.4] scaled to [0, 1]
    def scaled(name):
        acc, seconds = TABLE[name][1], TABLE[name][2]
        return ((acc - 0.62) / (0.95 - 0.62), (-seconds + 3.0) / (3.0 - 0.4))

    reference = (-0.1, -0.1)
    kept = union_area([scaled(n) for n in "ACDE"], reference)
    full = union_area([scaled(n) for n in TABLE], reference)
    assert outcome.hypervolume_ratio == pytest.approx(kept / full)
    assert 0.5 < outcome.hypervolume_ratio < 1

    result = invoke("replay", str(tmp_path / "run"), "--objectives", "val_acc:max,time_per_epoch_s:min",
                    "--reduction-factor", "2", "--json")
    assert result.exit_code == 0, result.output
    as_run, rule = json.loads(result.output)["settings"]
    assert as_run["scheduler"] == "as run" and as_run["epochs"] == 12 and as_run["wall_s"] == pytest.approx(15.0)
    assert rule["scheduler"] == "mo-asha" and rule["epochs"] == 10 and rule["epochs_fraction"] == pytest.approx(10 / 12)
    assert rule["trials"][ID["B"]] == {"epochs": 1, "stopped_at_rung": 1}
    assert rule["trials"][ID["A"]] == {"epochs": 2, "stopped_at_rung": None}
    assert rule["pick"]["config"] == {"model": "iaro1", "lr": 0.003} and rule["regret"] == pytest.approx(0.03)
    assert rule["hypervolume_ratio"] == pytest.approx(kept / full)


def test_concurrency_fills_each_free_slot_with_the_next_trial(tmp_path):
    """Two slots, every epoch trained: A (2 s) and B (4 s) start; C (6 s) takes A's slot at 2 and
    ends at 8; D, E, F follow in B's slot from 4 (5, 5.8, 7.0): the last trial ends at 8 s."""
    curves = replay.Curves.of(store.load_run(hand_run(tmp_path / "run")))
    outcome = replay.simulate(curves, replay.Setting("none", 1, 2, replay.parse("val_acc:max"), concurrency=2))
    assert outcome.wall_s == pytest.approx(8.0) and outcome.total_epochs == 12


def test_sweep_and_its_table(tmp_path):
    hand_run(tmp_path / "run")
    result = invoke("replay", str(tmp_path / "run"), "--sweep")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Replay on run run: 6 trials, up to 2 epochs, 1 at a time, in the run's order and epoch times."
    rules_shown = [line.split("  ")[0] for line in lines if line.startswith(("as run", "asha"))]
    # grace periods 1 and 2 (4 is more than the run's 2 epochs) x reduction factors 2, 3, 4
    assert rules_shown == ["as run"] + [f"asha grace {g} rf {f}" for g in (1, 2) for f in (2, 3, 4)]


def test_a_run_lacking_the_epochs_a_rule_needs_is_one_error(tmp_path):
    hand_run(tmp_path / "run", epochs={"B": 1, "E": 1})  # stopped after one epoch by the run's own rule
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    result = invoke("replay", str(tmp_path / "run"), "--scheduler", "none")
    assert result.exit_code == 1
    assert result.output == (
        "Error: replaying none needs epochs run run did not train: t1 trained 1 (stopped early in the run), the "
        "replay needs 2; t4 trained 1 (stopped early in the run), the replay needs 2. Replay a run made with "
        "--no-early-stop, or settings that stop these trials no later than the run did\n")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    # ASHA at reduction factor 2 stops both after epoch 1 (B below A's 0.80; E below the median 0.80 of
    # A, B, C, D), so it needs none of their missing epochs
    result = invoke("replay", str(tmp_path / "run"), "--reduction-factor", "2", "--json")
    assert result.exit_code == 0, result.output
    rule = json.loads(result.output)["settings"][1]
    assert {tid for tid, t in rule["trials"].items() if t["stopped_at_rung"]} == {ID["B"], ID["E"]}


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "mo-asha", "--objectives", "val_acc:max"], "Error: mo-asha needs at least two objectives"),
    (["--objectives", "val_acc:max,speed:min"], "Error: --objectives: 'speed' names no epoch or trial column"),
    (["--scheduler", "hyperband"], "Error: Invalid value for '--scheduler': 'hyperband' is not one of"),
    (["--concurrency", "0"], "Error: --concurrency must be >= 1, got 0"),
    (["--grace-period", "3"], "Error: --grace-period 3 is more than the trials' 2 epochs; give 1 to 2"),
])
def test_bad_replay_options_are_one_line(tmp_path, args, message):
    hand_run(tmp_path / "run")
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "run"), *args])
    assert result.exit_code != 0 and result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_readmes_replay_example_is_what_the_committed_run_replays_to():
    """The README's example output and results/reference/replay.md's tables, from the committed
    run's tables: the same command prints them again, character for character."""
    root = Path(__file__).resolve().parent.parent
    readme, reference = (root / "README.md").read_text(), (root / "results" / "reference" / "replay.md").read_text()
    run_dir = root / "results" / "reference" / "fourfam-2k-9ep-full"
    for options in (["--objectives", "val_acc:max,time_per_epoch_s:min"],
                    ["--objectives", "val_acc:max,time_per_epoch_s:min", "--scheduler", "asha"], []):
        result = invoke("replay", str(run_dir), "--sweep", *options)
        assert result.exit_code == 0, result.output
        table = "\n".join(line for line in result.output.splitlines()
                          if not line.startswith(("Replay on", "Objectives", "pick:", "hypervolume:"))).strip()
        assert table in reference
    shown = invoke("replay", str(run_dir), "--sweep", "--objectives", "val_acc:max,time_per_epoch_s:min").output
    assert shown.strip() in readme
