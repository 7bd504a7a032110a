"""Synchronous successive halving for Ray Tune: a trial that reaches a rung waits there,
paused, until every trial of its cohort has reported at that rung; then the best
``1 / reduction_factor`` of them go on and the rest stop.

Why not Ray's ASHA: ASHA decides each trial the moment it reaches a rung, against the
trials that happened to get there before it. The first trial always goes on and the second
is compared with one other, so on a sweep of a few trials which ones are stopped depends on
the order they arrive, and so does the cost (22% to 50% of trial-steps saved on the sample
sweep, bench/RESULTS.md). Here every trial of a rung is compared with all the others: with
reproducible training the same sweep stops the same trials every time.

Waiting costs a restart, not a slot, while another trial needs the slot: a paused trial gives
its slot to the next one, and goes on from the Ray Train checkpoint it wrote with its report
at the rung. The searcher's concurrency limit must not count waiting trials
(:class:`HalvingLimiter`), or the trials that have to reach the rung before a decision could
never start. Where no trial is left to start before the rung's decision (the last trials of a
sweep to reach it), a trial waits in its slot instead, and a kept one trains on without a
restart (a restart of a sample trial costs about 40 s on 2 CPUs, bench/RESULTS.md).

The rungs' scores are kept in a small JSON file in the sweep's storage, so a sweep resumed
after its driver died decides its rungs on the scores reported before. Not in Tune's
experiment folder: a resumed Tune downloads that folder and uploads its copy back as it goes,
which would put the old scores back over the new ones.
"""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.fs
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from sevlm_train.sweep_spec import storage_fs

STATE_FILE = "halving.json"


def rungs(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """The rungs' steps: ``grace_period * reduction_factor**k``, rounded up, below ``max_t``."""
    steps, step = [], grace_period
    while step < max_t:
        steps.append(step)
        step = math.ceil(step * reduction_factor)
    return steps


def reaches_rung(milestones: Sequence[int], passed: int, step: int) -> bool:
    """Whether a report at ``step`` reaches the next rung of a trial that has passed
    ``passed`` rungs: the first rung not passed, when the step is at least that rung's. (The
    scheduler scores such a report at that rung; :class:`RungGate` waits after it.)"""
    return passed < len(milestones) and step >= milestones[passed]


class SuccessiveHalving(FIFOScheduler):
    """Rungs at ``grace_period * reduction_factor**k`` steps (``time_attr``) below ``max_t``.

    A rung's cohort is every trial of the sweep (``num_samples``) for the first rung, the
    trials kept at the rung before for the others; a trial that ends (fails) before a rung
    leaves its cohort. At least one trial goes on from each rung. A trial's last report
    (``final`` in its result) is never stopped: it exports its model after it.
    """

    def __init__(
        self,
        *,
        grace_period: int,
        max_t: int,
        reduction_factor: float,
        num_samples: int,
        max_concurrent: int,
        state: str | None = None,
        time_attr: str = "step",
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__()
        if grace_period < 1 or reduction_factor <= 1 or num_samples < 1 or max_concurrent < 1:
            raise ValueError("successive halving: grace_period, num_samples and max_concurrent "
                             "must be >= 1 and reduction_factor > 1")  # fmt: skip
        self.milestones = rungs(grace_period, max_t, reduction_factor)
        self.reduction_factor = reduction_factor
        self.num_samples = num_samples
        self.max_concurrent = max_concurrent
        self.time_attr = time_attr
        self._metric, self._mode = metric, mode
        self.state = state
        """A JSON file (local path or URI) for the rungs; None: kept in memory only."""
        self.scores: list[dict[str, float]] = [{} for _ in self.milestones]
        """Per rung: trial id -> its score there, smaller is better (negated for max)."""
        self.kept: list[list[str] | None] = [None for _ in self.milestones]
        """Per rung: the trials that went on, once the rung is decided."""
        self.holding: dict[str, int] = {}
        """Trials that waited in their slot for a rung's decision: trial id -> rung. One that
        the rung drops is stopped at its next report (its RungGate makes one at once): Tune
        cannot end a running trial between reports sooner than its 600 s clean-up timeout."""
        self._loaded = False

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    # ---- what Tune asks ----

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        """A trial that --resume restores while it waits at a rung, or after its rung dropped
        it, stays paused: Tune would otherwise start it again and run it past the rung."""
        self._load()
        if trial.status == Trial.PENDING and not self._goes_on(trial):
            trial.set_status(Trial.PAUSED)  # before Tune files the trial under its status

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._load()
        trial_id = trial.trial_id
        if result.get("final"):
            return self.CONTINUE
        standing = self._standing(trial_id)
        if standing == "waiting":
            return self.PAUSE
        if standing == "dropped":
            return self.STOP
        rung = self._rung_of(trial_id)
        nxt = 0 if rung is None else rung + 1
        if not reaches_rung(self.milestones, nxt, result.get(self.time_attr, 0)):
            return self.CONTINUE
        score = result.get(self._metric)
        if score is None or score != score:  # missing or NaN: the worst
            self.scores[nxt][trial_id] = math.inf
        else:
            self.scores[nxt][trial_id] = -float(score) if self._mode == "max" else float(score)
        self._save()
        self._decide(tune_controller)
        if self.kept[nxt] is not None:
            return self.CONTINUE if trial_id in self.kept[nxt] else self.STOP
        if self._slot_wanted(tune_controller, nxt):
            return self.PAUSE
        self.holding[trial_id] = nxt  # its RungGate waits on in its slot (see the file)
        self._save()
        return self.CONTINUE

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """A kept trial waiting at its rung first, while fewer than ``max_concurrent`` run;
        else a new one. A trial still waiting for its rung's decision is never chosen."""
        self._load()
        self._decide(tune_controller)
        trials = tune_controller.get_trials()
        busy = sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials if self._goes_on(t))
        for trial in trials:
            if trial.status == Trial.PAUSED and self._goes_on(trial) and busy < self.max_concurrent:
                return trial
        for trial in trials:
            if trial.status == Trial.PENDING and self._goes_on(trial):
                return trial
        return None

    def waiting(self) -> set[str]:
        """Trials at a rung not decided yet: paused, or holding their slot while no trial
        is left to start (so none waits for the slot)."""
        return {t for k, scores in enumerate(self.scores) if self.kept[k] is None for t in scores}

    def debug_string(self) -> str:
        shown = ", ".join(
            f"step {m}: {len(s)} reported, " + ("waiting" if k is None else f"{len(k)} kept")
            for m, s, k in zip(self.milestones, self.scores, self.kept, strict=True)
        )
        return f"Successive halving ({shown or 'no rung below max_t'})"

    # ---- the rungs ----

    def _rung_of(self, trial_id: str) -> int | None:
        """The last rung the trial reported at."""
        reported = [k for k, scores in enumerate(self.scores) if trial_id in scores]
        return reported[-1] if reported else None

    def _standing(self, trial_id: str) -> str:
        """new (before its first rung), or at its last rung: waiting, kept or dropped."""
        rung = self._rung_of(trial_id)
        if rung is None:
            return "new"
        if self.kept[rung] is None:
            return "waiting"
        return "kept" if trial_id in self.kept[rung] else "dropped"

    def _goes_on(self, trial: Trial) -> bool:
        return self._standing(trial.trial_id) in ("new", "kept")

    def _slot_wanted(self, tune_controller, rung: int) -> bool:
        """Whether a trial that has to reach ``rung`` before its decision has yet to start
        (or to restart): one not created yet, pending, or paused at the rung before."""
        trials = tune_controller.get_trials()
        if rung == 0 and len(trials) < self.num_samples:
            return True
        cohort = None if rung == 0 else set(self.kept[rung - 1])
        return any(
            t.status in (Trial.PENDING, Trial.PAUSED)
            and t.trial_id not in self.scores[rung]
            and (cohort is None or t.trial_id in cohort)
            for t in trials
        )

    def _decide(self, tune_controller) -> None:
        """Decide every rung whose cohort is complete, in order, and stop the trials not
        running that a rung dropped (a trial reporting now is told by its decision)."""
        trials = {t.trial_id: t for t in tune_controller.get_trials()}
        ended = (Trial.TERMINATED, Trial.ERROR)
        for k, scores in enumerate(self.scores):
            if self.kept[k] is not None:
                continue
            cohort = set(trials) if k == 0 else set(self.kept[k - 1])
            if k == 0 and len(trials) < self.num_samples:
                break
            if any(t not in scores and t in trials and trials[t].status not in ended
                   for t in cohort):  # fmt: skip
                break
            keep = max(1, math.floor(len(scores) / self.reduction_factor)) if scores else 0
            self.kept[k] = sorted(scores, key=lambda t: (scores[t], t))[:keep]
            self._save()
        for trial in trials.values():
            idle = trial.status in (Trial.PAUSED, Trial.PENDING)
            if idle and self._standing(trial.trial_id) == "dropped":
                tune_controller.stop_trial(trial)

    # ---- the state file ----

    def _load(self) -> None:
        if self._loaded or self.state is None:
            return
        self._loaded = True
        saved = read_state(self.state)
        if saved is None:
            return
        if saved["milestones"] != self.milestones:
            raise ValueError(f"{self.state}: written for rungs {saved['milestones']}, "
                             f"not {self.milestones}")  # fmt: skip
        self.scores, self.kept = saved["scores"], saved["kept"]
        self.holding = saved.get("holding", {})

    def _save(self) -> None:
        """Written whole to a new file, then moved over the old one."""
        if self.state is None:
            return
        fs, path = storage_fs(self.state)
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        staged = f"{path}.{uuid.uuid4().hex}"
        state = {"milestones": self.milestones, "scores": self.scores, "kept": self.kept,
                 "holding": self.holding}  # fmt: skip
        with fs.open_output_stream(staged) as f:
            f.write(json.dumps(state, indent=1).encode())
        fs.move(staged, path)


def read_state(state: str) -> dict | None:
    """The rungs' file (milestones, scores, kept), or None before the first save."""
    fs, path = storage_fs(state)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


class HalvingLimiter(ConcurrencyLimiter):
    """A ConcurrencyLimiter that does not count trials waiting at a rung of ``halving``."""

    def __init__(self, searcher: Searcher, max_concurrent: int, halving: SuccessiveHalving):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.halving = halving

    def get_state(self) -> dict:
        """The limiter's own state, which Tune saves and a resumed sweep restores: not the
        scheduler, or the restored limiter would consult a stale copy of its rungs."""
        skip = ("searcher", "halving")
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in skip})

    def suggest(self, trial_id: str) -> dict | None:
        running = self.live_trials - self.halving.waiting()
        if len(running) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion


@dataclass(frozen=True)
class RungGate:
    """Holds a trial's training at each rung until the sweep has decided the rung.

    Tune's verdict (pause or stop) reaches a trial's Ray Train workers a second or so after
    their report, and they would train on meanwhile: steps that are thrown away, validations
    logged past the rung. Instead, after the report that reaches a rung, the workers read the
    rungs' file until the trial is among the kept; a trial paused or stopped is ended by Tune
    while it waits. A trial the scheduler lets wait in its slot (``holding`` in the file)
    waits for the rung's decision however long the other trials take to reach the rung, and
    when dropped, reports again at once (:mod:`sevlm_train.loop` does), which Tune answers
    with a stop.
    """

    state: str
    """The scheduler's rungs file (local path or URI)."""
    trial_id: str
    milestones: tuple[int, ...]
    timeout_s: float = 60.0
    """How long to wait for a verdict (or, holding, for the decision to stop the trial)
    before training on (with a warning)."""
    poll_s: float = 0.2

    def passed(self) -> int:
        """The rungs the trial has reported at, as the scheduler counts them (a trial
        restarted from its checkpoint at a rung has passed that rung)."""
        saved = read_state(self.state)
        return sum(self.trial_id in scores for scores in saved["scores"]) if saved else 0

    def reaches(self, passed: int, step: int) -> bool:
        """Whether a report at ``step`` reaches the next rung, as the scheduler counts it."""
        return reaches_rung(self.milestones, passed, step)

    def wait(self, rung: int) -> str:
        """``kept`` once the trial goes on from ``rung``; ``released`` once a trial that waits
        in its slot is dropped; else, after ``timeout_s``, what the file said last:
        ``dropped`` (Tune's stop has not come) or ``undecided``. A failed read (storage busy
        or briefly stale) counts as undecided."""
        deadline = time.monotonic() + self.timeout_s
        verdict = "undecided"
        while time.monotonic() < deadline:
            try:
                saved = read_state(self.state)
            except OSError:
                saved = None
            kept = saved["kept"][rung] if saved else None
            held = saved is not None and saved.get("holding", {}).get(self.trial_id) == rung
            if kept is not None and self.trial_id in kept:
                return "kept"
            if kept is not None and held:
                return "released"
            if kept is not None:
                verdict = "dropped"
            elif held:
                deadline = time.monotonic() + self.timeout_s
            time.sleep(self.poll_s)
        return verdict
