"""The stopping rules as plain Python: ASHA decision for decision as Ray Tune's scheduler,
MO-ASHA on a table worked by hand, the Pareto helpers against brute force, objectives."""

from __future__ import annotations

import itertools
import math
import random
import re
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler

from tunefm.errors import UserError
from tunefm.stopping import objectives, pareto, rules

SHAPES = [(9, 1, 3), (10, 1, 2), (1000, 1, 10), (8, 2, 2), (27, 3, 3), (5, 1, 4), (3, 1, 3), (4, 4, 2)]


def random_stream(seed: int, max_t: int, trials: int = 40, running: int = 4):
    """(trial id, epoch, val_acc) as an asynchronous search reports them: up to `running`
    trials at once, each step one of them reports its next epoch. Values repeat (ties) and
    some are NaN (a diverged trial)."""
    rng = random.Random(seed)
    waiting = [f"t{i:02d}" for i in range(trials)]
    active: dict[str, int] = {}
    while waiting or active:
        while waiting and len(active) < running:
            active[waiting.pop(0)] = 0
        trial = rng.choice(sorted(active))
        active[trial] += 1
        value = math.nan if rng.random() < 0.05 else round(rng.random(), 1)
        yield trial, active[trial], value
        ended = yield
        if ended or active[trial] >= max_t:
            del active[trial]


@pytest.mark.parametrize("max_t, grace, factor", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asha_decides_as_ray_tunes_asha_scheduler(max_t, grace, factor, seed):
    ray_asha = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max", max_t=max_t, grace_period=grace,
                             reduction_factor=factor)
    ours = rules.make("asha", objectives.parse("val_acc:max"), max_t, grace, factor)
    histories: dict[str, list[dict]] = {}
    stream = random_stream(seed, max_t)
    decisions = 0
    stops = 0
    for trial_id, epoch, value in stream:
        trial = SimpleNamespace(trial_id=trial_id)
        if epoch == 1:
            ray_asha.on_trial_add(None, trial)
        theirs = ray_asha.on_trial_result(None, trial, {"epoch": epoch, "val_acc": value})
        histories.setdefault(trial_id, []).append({"epoch": epoch, "val_acc": value})
        mine = ours.on_epoch(trial_id, histories[trial_id])
        assert (mine != rules.CONTINUE) == (theirs == "STOP"), (trial_id, epoch, value, mine, theirs)
        decisions += 1
        stops += mine == rules.STOP
        stream.send(mine != rules.CONTINUE)
    assert ours.rungs[-1][0] == grace and [m for m, _ in ours.rungs] == [m for m, _ in ray_asha._brackets[0]._rungs]
    assert decisions > 40 and (stops > 0 or max_t == grace)
    assert set(ours.stopped_at.values()) <= {m for m, _ in ours.rungs}


def test_mo_asha_on_a_rung_worked_by_hand():
    """Six trials reach the first rung (reduction factor 2) in order, scored on (val_acc max,
    time_per_epoch_s min). A first: continues. B (0.70, 2.0): A dominates it; 2nd of 2, keep 1:
    stops. C (0.90, 3.0): front {A, C}, both ends (infinite crowding), A recorded first: C 2nd
    of 3, keep 2: continues. D (0.85, 0.5) dominates A: front {C, D}, D 2nd of 4, keep 2:
    continues. E (0.60, 0.4), the cheapest: front {C, D, E}; D sits between the two ends
    (crowding 1 + 1 = 2): order C, E, D; E 2nd of 5, keep 3: continues. F (0.84, 0.6): D dominates
    it, it dominates A: 4th of 6 (after C, E, D), keep 3: stops."""
    table = {"A": (0.80, 1.0), "B": (0.70, 2.0), "C": (0.90, 3.0), "D": (0.85, 0.5), "E": (0.60, 0.4),
             "F": (0.84, 0.6)}
    rule = rules.make("mo-asha", objectives.parse("val_acc:max,time_per_epoch_s:min"), 4, 1, 2)
    decided = {tid: rule.on_epoch(tid, [{"epoch": 1, "val_acc": acc, "epoch_time_s": seconds}])
               for tid, (acc, seconds) in table.items()}
    assert decided == {"A": "continue", "B": "stop", "C": "continue", "D": "continue", "E": "continue",
                       "F": "stop"}
    assert rule.stopped_at == {"B": 1, "F": 1}


def test_rules_refuse_what_cannot_be():
    one, two = objectives.parse("val_acc:max"), objectives.parse("val_acc:max,params:min")
    with pytest.raises(UserError, match="mo-asha needs at least two objectives"):
        rules.make("mo-asha", one, 9, 1, 3)
    with pytest.raises(UserError, match=r"asha judges one objective, got 2 \(val_acc:max, params:min\)"):
        rules.make("asha", two, 9, 1, 3)
    with pytest.raises(UserError, match="--grace-period 4 is more than the trials' 3 epochs; give 1 to 3"):
        rules.make("asha", one, 3, 4, 3)
    assert rules.milestones(1000, 1, 10) == [100, 10, 1]  # log(1000)/log(10) < 3, as in Ray
    assert rules.milestones(9, 1, 3) == [9, 3, 1]


def brute_front(points):
    return [i for i, p in enumerate(points) if not any(pareto.dominates(q, p) for q in points)]


def brute_hypervolume(points, reference):
    """Inclusion-exclusion over every subset: the volume of a union of boxes from `reference`."""
    volume = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            box = math.prod(max(0.0, min(p[k] for p in subset) - reference[k]) for k in range(len(reference)))
            volume += (-1) ** (size + 1) * box
    return volume


@pytest.mark.parametrize("dims", [2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_pareto_helpers_against_brute_force(dims, seed):
    rng = random.Random(seed)
    points = [tuple(round(rng.random(), 1) for _ in range(dims)) for _ in range(7)]
    assert pareto.front(points) == brute_front(points)
    rank = pareto.ranks(points)
    remaining = list(range(len(points)))
    level = 0
    while remaining:  # peel fronts one by one
        layer = [remaining[i] for i in brute_front([points[j] for j in remaining])]
        assert all(rank[i] == level for i in layer)
        remaining = [i for i in remaining if i not in layer]
        level += 1
    reference = (-0.1,) * dims
    assert pareto.hypervolume(points, reference) == pytest.approx(brute_hypervolume(points, reference))
    assert sorted(pareto.order(points)) == list(range(len(points)))


def test_pareto_ranks_of_no_point_and_of_one():
    assert pareto.ranks([]) == [] and pareto.ranks([(0.5, 1.0)]) == [0]


def test_objectives_parse_and_read_trial_columns():
    parsed = objectives.parse("val_acc:max, time_per_epoch_s:min")
    assert [str(o) for o in parsed] == ["val_acc:max", "time_per_epoch_s:min"]
    history = [{"epoch": 1, "val_acc": 0.5, "epoch_time_s": 2.0, "train_loss": 1.0, "val_loss": 1.2},
               {"epoch": 2, "val_acc": 0.6, "epoch_time_s": 4.0, "train_loss": 0.8, "val_loss": 1.1}]
    assert objectives.values(parsed, history) == (0.6, 3.0)  # the epoch's val_acc; the mean epoch time so far
    assert objectives.scores(parsed, history) == (0.6, -3.0)
    assert objectives.values(objectives.parse("params:min"), history, {"params": 1234}) == (1234.0,)
    assert objectives.scores(objectives.parse("time_to_90_train_acc_s:min"), history) == (-math.inf,)
    for text, message in [
        ("val_accuracy:max", "'val_accuracy' names no epoch or trial column; valid: train_loss, train_acc"),
        ("test_acc:max", "'test_acc' names no epoch or trial column (measured after training"),
        ("val_acc", "give val_acc a direction, val_acc:max or val_acc:min, got 'val_acc'"),
        ("val_acc:up", "give val_acc a direction"),
        ("val_acc:max,val_acc:min", "--objectives names val_acc twice"),
        ("", "--objectives takes COLUMN:max|min"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            objectives.parse(text)



def test_a_resumed_searchs_scheduler_replays_the_rows_in_the_order_they_came():
    """The rows of the worked rung as a search wrote them, trials started 10 s apart, so each
    reported epoch 1 before the next began: the replay gives the rung the same state (B and F
    stopped) and judges a new trial against all six, with each trial's params from trials.parquet."""
    import pandas as pd

    from tunefm.tune.stopping import RuleScheduler

    table = {"A": (0.80, 1.0), "B": (0.70, 2.0), "C": (0.90, 3.0), "D": (0.85, 0.5), "E": (0.60, 0.4),
             "F": (0.84, 0.6)}
    names = list(table)[::-1]  # written in another order than they ran
    epochs = pd.DataFrame([{"trial_id": n, "epoch": 1, "val_acc": table[n][0], "epoch_time_s": table[n][1],
                            "time_total_s": table[n][1]} for n in names])
    trials = pd.DataFrame([{"trial_id": n, "started_at": 1000.0 + 10 * list(table).index(n), "params": 5}
                           for n in names])
    scheduler = RuleScheduler(rules.make("mo-asha", objectives.parse("val_acc:max,time_per_epoch_s:min"), 4, 1, 2))
    scheduler.replay(epochs, trials)
    assert scheduler.stopped_at == {"B": 1, "F": 1}
    [(_, recorded)] = [(m, r) for m, r in scheduler.rule.rungs if m == 1]
    assert set(recorded) == set(table)
    # G dominates every one of them: first of seven, it goes on
    new = SimpleNamespace(trial_id="G")
    assert scheduler.on_trial_result(None, new, {"epoch": 1, "val_acc": 0.99, "epoch_time_s": 0.1}) == "CONTINUE"
