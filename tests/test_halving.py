"""Successive halving, decided on fake trials: every trial of a rung is compared with all the
others, whatever order they arrive in; waiting trials give up their slot when another trial
needs it, and keep it when none does; the rungs survive a restarted driver."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from sevlm.config import SearchConfig
from sevlm_train.halving import HalvingLimiter, RungGate, SuccessiveHalving


@dataclass
class FakeTrial:
    """A trial as Tune shows it: pending until it runs (:func:`report` runs it)."""

    trial_id: str
    status: str = Trial.PENDING

    def set_status(self, status: str) -> None:
        self.status = status


@dataclass
class FakeController:
    """What the scheduler asks of Tune's controller: the trials, and stopping one."""

    trials: list[FakeTrial]
    stopped: list[str] = field(default_factory=list)

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        trial.status = Trial.TERMINATED
        self.stopped.append(trial.trial_id)


def halving(**kw) -> SuccessiveHalving:
    args = {"grace_period": 40, "max_t": 120, "reduction_factor": 3, "num_samples": 6,
            "max_concurrent": 2, "metric": "loss", "mode": "min"} | kw  # fmt: skip
    return SuccessiveHalving(**args)


def report(scheduler, controller, trial, step, loss, final=0.0) -> str:
    """The trial reports (it runs, then), and its status follows the scheduler's answer."""
    trial.status = Trial.RUNNING
    decision = scheduler.on_trial_result(
        controller, trial, {"step": step, "loss": loss, "final": final}
    )
    trial.status = {"PAUSE": Trial.PAUSED, "STOP": Trial.TERMINATED}.get(decision, trial.status)
    return decision


LOSSES = {"a": 3.0, "b": 2.5, "c": 4.0, "d": 1.5, "e": 3.5, "f": 2.0}  # best: d, then f


def test_rungs_sit_below_max_t():
    assert halving().milestones == [40]
    assert halving(grace_period=20).milestones == [20, 60]
    assert halving(grace_period=40, reduction_factor=2, max_t=400).milestones == [40, 80, 160, 320]
    assert halving(grace_period=120).milestones == []  # no rung: every trial runs to its end


@pytest.mark.parametrize("order", [list("abcdef"), list("fedcba"), list("dafbec")])
def test_every_trial_of_a_rung_waits_and_the_best_third_go_on_in_any_order(order):
    scheduler = halving()
    trials = {t: FakeTrial(t) for t in order}
    controller = FakeController(list(trials.values()))
    decisions = {t: report(scheduler, controller, trials[t], 40, LOSSES[t]) for t in order}
    last = order[-1]
    # everyone but the last to arrive waited; the last one's result decided the rung
    assert all(decisions[t] == "PAUSE" for t in order[:-1])
    assert decisions[last] == ("CONTINUE" if last in "df" else "STOP")
    assert scheduler.kept == [["d", "f"]]
    assert sorted(controller.stopped) == sorted(set("abce") - {last})
    assert {t for t, trial in trials.items() if trial.status == Trial.PAUSED} == set("df") - {last}


def test_a_trial_is_never_stopped_at_its_last_report_and_kept_trials_run_on():
    scheduler = halving(num_samples=3)
    trials = [FakeTrial(t) for t in "abc"]
    controller = FakeController(trials)
    for trial, loss in zip(trials, (2.0, 1.0, 3.0), strict=True):
        report(scheduler, controller, trial, 40, loss)
    assert scheduler.kept == [["b"]]
    assert report(scheduler, controller, trials[1], 80, 0.9) == "CONTINUE"  # no rung at 80
    assert report(scheduler, controller, trials[1], 120, 5.0, final=1.0) == "CONTINUE"


def test_waiting_trials_free_their_slot_and_kept_ones_are_run_first():
    scheduler = halving(num_samples=6, max_concurrent=2, reduction_factor=2, max_t=80)
    trials = {t: FakeTrial(t) for t in "abcdef"}
    controller = FakeController(list(trials.values()))
    trials["a"].status = trials["b"].status = Trial.RUNNING
    report(scheduler, controller, trials["a"], 40, 1.0)
    assert scheduler.waiting() == {"a"}
    assert scheduler.choose_trial_to_run(controller) is trials["c"]  # never the waiting a
    for t, loss in zip("bcde", (4.0, 2.0, 3.0, 5.0), strict=True):
        trials[t].status = Trial.RUNNING
        assert report(scheduler, controller, trials[t], 40, loss) == "PAUSE"
    trials["f"].status = Trial.RUNNING
    assert report(scheduler, controller, trials["f"], 40, 0.5) == "CONTINUE"  # the last one
    assert scheduler.kept == [["f", "a", "c"]] and scheduler.waiting() == set()
    assert scheduler.choose_trial_to_run(controller) is trials["a"]  # f runs: one slot left
    trials["a"].status = Trial.PENDING  # Tune stages it: asked again, the same answer
    assert scheduler.choose_trial_to_run(controller) is trials["a"]  # not c: no slot free
    trials["f"].status = Trial.TERMINATED
    assert scheduler.choose_trial_to_run(controller) is trials["c"]


def test_a_trial_that_fails_before_the_rung_leaves_its_cohort():
    scheduler = halving(num_samples=3, reduction_factor=2, max_t=80)
    trials = [FakeTrial(t) for t in "abc"]
    controller = FakeController(trials)
    report(scheduler, controller, trials[0], 40, 2.0)
    report(scheduler, controller, trials[1], 40, 1.0)
    assert scheduler.kept == [None]  # c may still come
    trials[2].status = Trial.ERROR
    scheduler.choose_trial_to_run(controller)
    assert scheduler.kept == [["b"]] and controller.stopped == ["a"]


def test_the_first_rung_waits_for_trials_not_yet_created():
    scheduler = halving(num_samples=3, reduction_factor=2, max_t=80)
    trials = [FakeTrial(t) for t in "ab"]
    controller = FakeController(trials)
    assert report(scheduler, controller, trials[0], 40, 2.0) == "PAUSE"
    assert report(scheduler, controller, trials[1], 40, 1.0) == "PAUSE"  # a third is to come
    assert scheduler.kept == [None]


def test_max_mode_keeps_the_largest_and_a_missing_score_counts_as_worst():
    scheduler = halving(num_samples=3, reduction_factor=3, mode="max")
    trials = [FakeTrial(t) for t in "abc"]
    controller = FakeController(trials)
    report(scheduler, controller, trials[0], 40, float("nan"))
    report(scheduler, controller, trials[1], 40, 0.2)
    report(scheduler, controller, trials[2], 40, 0.7)
    assert scheduler.kept == [["c"]]


def test_the_rungs_survive_a_restarted_driver(tmp_path):
    state = str(tmp_path / "sweep" / "halving.json")  # its folder is made on the first save
    first = halving(num_samples=3, reduction_factor=2, max_t=80, state=state)
    trials = [FakeTrial(t) for t in "abc"]
    controller = FakeController(trials)
    report(first, controller, trials[0], 40, 2.0)
    report(first, controller, trials[1], 40, 1.0)
    assert json.loads((tmp_path / "sweep" / "halving.json").read_text())["scores"] == [
        {"a": 2.0, "b": 1.0}
    ]
    assert list((tmp_path / "sweep").iterdir()) == [tmp_path / "sweep" / "halving.json"]

    # --resume: Tune restores the unfinished trials as pending; the waiting ones stay paused
    again = halving(num_samples=3, reduction_factor=2, max_t=80, state=state)
    for trial in trials:
        trial.status = Trial.PENDING
        again.on_trial_add(controller, trial)
    assert [t.status for t in trials] == [Trial.PAUSED, Trial.PAUSED, Trial.PENDING]
    assert again.choose_trial_to_run(controller) is trials[2]
    trials[2].status = Trial.RUNNING
    assert report(again, controller, trials[2], 40, 3.0) == "STOP"
    assert again.kept == [["b"]] and controller.stopped == ["a"]
    assert again.choose_trial_to_run(controller) is trials[1]

    # a trial dropped at a decided rung but not yet stopped when the driver died is stopped
    third = halving(num_samples=3, reduction_factor=2, max_t=80, state=state)
    trials[0].status = trials[1].status = Trial.PENDING
    for trial in trials[:2]:
        third.on_trial_add(controller, trial)
    assert [t.status for t in trials[:2]] == [Trial.PAUSED, Trial.PENDING]
    assert third.choose_trial_to_run(controller) is trials[1]
    assert controller.stopped == ["a", "a"]
    # a trial restarted some other way is told where it stands at its first report
    trials[0].status = Trial.RUNNING
    assert report(third, controller, trials[0], 80, 0.1) == "STOP"
    with pytest.raises(ValueError, match="written for rungs"):
        report(halving(grace_period=20, state=state), controller, trials[1], 80, 1.0)


def test_the_gate_holds_a_trial_at_its_rung_until_it_is_kept(tmp_path):
    """The workers' side: after the report that reaches a rung they wait for the rung's
    decision in the scheduler's file, and go on only when kept."""
    state = str(tmp_path / "halving.json")
    scheduler = halving(num_samples=2, reduction_factor=2, grace_period=4, max_t=12, state=state)
    trials = [FakeTrial(t) for t in "ab"]
    controller = FakeController(trials)
    gate = {t: RungGate(state, t, (4, 8), timeout_s=0.3, poll_s=0.01) for t in "ab"}
    assert scheduler.milestones == list(gate["a"].milestones)
    assert gate["a"].passed() == 0  # no file yet
    # reports every 3 steps: step 3 reaches no rung, 6 the first (at 4), 9 the second (at 8)
    assert not gate["a"].reaches(0, 3) and gate["a"].reaches(0, 6) and gate["a"].reaches(1, 9)
    assert not gate["a"].reaches(1, 6) and not gate["a"].reaches(2, 12)

    assert report(scheduler, controller, trials[0], 6, 2.0) == "PAUSE"
    started = time.monotonic()
    assert gate["a"].wait(0) == "undecided"  # no verdict within the timeout
    assert time.monotonic() - started >= 0.3
    assert report(scheduler, controller, trials[1], 6, 1.0) == "CONTINUE"
    assert gate["b"].wait(0) == "kept"
    assert gate["a"].wait(0) == "dropped"  # it waited the timeout out, to be stopped
    assert gate["b"].passed() == 1 and gate["a"].passed() == 1


@pytest.mark.parametrize("val_every", [3, 4])
def test_the_gate_counts_rungs_as_the_scheduler_does(tmp_path, val_every):
    """Validations every 3 steps jump past the rungs at 4 and 8 (steps 6 and 9 reach them);
    every 4 steps land on them. The gate expects a verdict exactly at the reports the
    scheduler scores at a rung, and a lone trial is kept at once."""
    state = str(tmp_path / "halving.json")
    scheduler = halving(num_samples=1, reduction_factor=2, grace_period=4, max_t=12, state=state)
    trial = FakeTrial("a")
    gate = RungGate(state, "a", tuple(scheduler.milestones), timeout_s=0.3, poll_s=0.01)
    passed = 0
    for step in range(val_every, 12, val_every):
        before = sum("a" in scores for scores in scheduler.scores)
        assert report(scheduler, FakeController([trial]), trial, step, 1.0) == "CONTINUE"
        scored = sum("a" in scores for scores in scheduler.scores) > before
        assert gate.reaches(passed, step) == scored, step
        if scored:
            assert gate.wait(passed) == "kept"
            passed += 1
    assert passed == 2 == gate.passed()


class Counting(Searcher):
    def __init__(self):
        super().__init__(metric="loss", mode="min")
        self.count = itertools.count()

    def suggest(self, trial_id):
        return {"x": next(self.count)}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def test_the_limiter_does_not_count_waiting_trials():
    scheduler = halving(num_samples=6, max_concurrent=2)
    limiter = HalvingLimiter(Counting(), 2, scheduler)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two running
    trials = [FakeTrial("a"), FakeTrial("b")]
    report(scheduler, FakeController(trials), trials[0], 40, 1.0)  # a waits at the rung
    assert limiter.suggest("c") == {"x": 2}
    assert limiter.suggest("d") is None


def test_the_scheduler_setting_is_checked():
    assert SearchConfig().scheduler == "halving"
    assert SearchConfig(scheduler="asha").scheduler == "asha"
    with pytest.raises(ValueError, match="halving or asha"):
        SearchConfig(scheduler="hyperband")


def test_a_restored_limiter_keeps_asking_the_live_scheduler():
    scheduler = halving(num_samples=6, max_concurrent=1)
    limiter = HalvingLimiter(Counting(), 1, scheduler)
    assert limiter.suggest("a")
    state = limiter.get_state()
    assert "halving" not in state and "searcher" not in state
    restored = HalvingLimiter(Counting(), 1, scheduler)
    restored.set_state(state)
    assert restored.suggest("b") is None  # a runs
    trials = [FakeTrial("a")]
    report(scheduler, FakeController(trials), trials[0], 40, 1.0)  # a waits: b may start
    assert restored.halving is scheduler and restored.suggest("b") == {"x": 0}


@pytest.mark.parametrize("e_loss, kept", [(3.5, ["d", "f"]), (1.0, ["e", "d"])])
def test_the_last_trials_of_a_rung_wait_in_their_slot(e_loss, kept):
    """a to d have reported and wait paused; e and f run, no trial is left to start: the first
    of them to reach the rung waits in its slot, and goes on from there if kept; dropped, it
    is stopped at the report its gate makes at once (Tune cannot end it between reports)."""
    scheduler = halving()
    trials = {t: FakeTrial(t) for t in "abcdef"}
    controller = FakeController(list(trials.values()))
    for t in "abcd":
        assert report(scheduler, controller, trials[t], 40, LOSSES[t]) == "PAUSE"
    trials["f"].status = Trial.RUNNING
    assert report(scheduler, controller, trials["e"], 40, e_loss) == "CONTINUE"
    assert scheduler.holding == {"e": 0} and scheduler.waiting() == set("abcde")
    assert scheduler.choose_trial_to_run(controller) is None  # nothing to start meanwhile
    assert report(scheduler, controller, trials["f"], 40, LOSSES["f"]) == (
        "CONTINUE" if "f" in kept else "STOP"
    )
    assert scheduler.kept == [kept]
    assert sorted(controller.stopped) == sorted(set("abcd") - set(kept))  # the paused ones
    assert trials["e"].status == Trial.RUNNING
    assert scheduler.choose_trial_to_run(controller) is trials["d"]  # paused, kept: restarts
    if "e" not in kept:  # its gate reports again
        assert report(scheduler, controller, trials["e"], 40, e_loss) == "STOP"


def test_a_trial_waits_paused_while_a_trial_of_its_rung_has_to_start():
    """At the second rung the cohort is the two kept at the first, both paused there: the
    first to restart and reach the rung gives its slot to the other."""
    scheduler = halving(num_samples=4, reduction_factor=2, grace_period=20, max_t=80)
    trials = {t: FakeTrial(t) for t in "abcd"}
    controller = FakeController(list(trials.values()))
    for t, loss in zip("abcd", (1.0, 2.0, 3.0, 4.0), strict=True):
        report(scheduler, controller, trials[t], 20, loss)
    assert scheduler.kept[0] == ["a", "b"] and trials["a"].status == Trial.PAUSED
    assert report(scheduler, controller, trials["b"], 40, 2.0) == "PAUSE"  # a must restart
    assert scheduler.holding == {}
    assert report(scheduler, controller, trials["a"], 40, 1.0) == "CONTINUE"
    assert scheduler.kept == [["a", "b"], ["a"]] and controller.stopped[-1] == "b"


@pytest.mark.parametrize("b_loss, verdict", [(2.0, "kept"), (0.5, "released")])
def test_the_gate_waits_past_its_timeout_while_the_trial_holds_its_slot(tmp_path, b_loss, verdict):
    state = str(tmp_path / "halving.json")
    scheduler = halving(num_samples=2, reduction_factor=2, grace_period=4, max_t=12, state=state)
    trials = [FakeTrial(t, Trial.RUNNING) for t in "ab"]
    controller = FakeController(trials)
    assert report(scheduler, controller, trials[0], 4, 1.0) == "CONTINUE"  # b runs: a holds
    gate = RungGate(state, "a", (4, 8), timeout_s=0.2, poll_s=0.01)
    got = []
    waiter = threading.Thread(target=lambda: got.append(gate.wait(0)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.6)  # three timeouts
    assert waiter.is_alive() and not got
    b_goes_on = report(scheduler, controller, trials[1], 4, b_loss) == "CONTINUE"
    waiter.join(5)
    assert got == [verdict] and b_goes_on == (verdict == "released")
    assert time.monotonic() - started >= 0.6
