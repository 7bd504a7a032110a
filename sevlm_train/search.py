"""A hyperparameter search: Ray Tune with Optuna's TPE and successive halving (or Ray's ASHA),
each trial a Ray Train run.

The driver checks the data once, opens the sweep's parent MLflow run and fits a Tuner. Each
trial is a function (Ray Train V2's pattern) that calls
:func:`sevlm_train.driver.run_training` with its sampled hyperparameters and Tune's report
callback, so every trial is a nested child MLflow run with its best checkpoint logged as a
model. At the end the best finished trial's model is registered under an alias (``champion``).

Early stopping and Optuna: Ray tells Optuna that a trial ASHA stopped is *complete*, with
the under-trained score it had when stopped, and TPE would take that as a finished result.
:class:`PruningOptunaSearch` tells Optuna such trials were *pruned* instead (their
intermediate scores were reported as they came), which is what TPE's model expects. (A trial
successive halving stops while it waits at a rung is told as pruned by Ray already.)

A trial's run name is ``<sweep>-<trial id>``: when a sweep is resumed, an interrupted trial
finds its Ray Train checkpoints and its MLflow run by that name and continues both.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import ray
import ray.tune
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sevlm.artemis import ArtemisData, DataSource, load_artemis
from sevlm.config import SearchConfig, TrainConfig, override_configs
from sevlm.examples import ExampleConfig
from sevlm.text import UtterancePrep
from sevlm.tracking import client_for, redact
from sevlm_train.driver import (
    Printer,
    Scaling,
    ensure_ray,
    feature_cache_root,
    mark_failed,
    prepare_feature_cache,
    run_training,
)
from sevlm_train.halving import STATE_FILE as HALVING_STATE
from sevlm_train.halving import HalvingLimiter, RungGate, SuccessiveHalving, rungs
from sevlm_train.sweep_record import (
    TRIAL_STATE_TAG,
    SweepOutcome,
    TrialRecorder,
    choose_and_register,
    log_sweep,
    trial_rows,
)
from sevlm_train.sweep_spec import SweepSpec, parent_run, save_spec, trial_run_name, tune_space

TRIAL_CPU = 0.05
"""The trial actor only drives a TorchTrainer; its workers hold the real resources."""
SWEEP_KIND_TAG = "sevlm.kind"


# ---- the search space, the searcher, the scheduler ----


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped before its end was pruned, and files
    its intermediate scores under their training step.

    Ray files them under Tune's ``training_iteration``, which starts again at 1 when a trial
    paused at a rung of successive halving restarts: Optuna then dropped the next score with a
    warning ("step=1 already reported") and the trial's later scores sat at too early steps,
    which TPE reads when it weighs pruned trials. A step reported before (a trial resumed
    after its run had ended reports its last result again) is skipped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_step: dict[str, int] = {}  # saved with the searcher: save() pickles __dict__

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        step = int(result["step"])
        if trial_id in self._completed_trials or step <= self._last_step.get(trial_id, 0):
            return
        self._ot_trials[trial_id].report(result[self.metric], step)
        self._last_step[trial_id] = step

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if result and not error and not result.get("final") and trial_id in self._ot_trials:
            if trial_id not in self._completed_trials:
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
                self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


class FinishingASHA(ASHAScheduler):
    """ASHA that lets a trial's last report through: stopping a trial there (a rung can sit
    at ``max_t``) would kill it before it exports and logs its model."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return self.CONTINUE if result.get("final") else decision


def trial_concurrency(
    resources: dict[str, float], scaling: Scaling, requested: int | None, printer: Printer
) -> int:
    """Trials that fit at once: ``floor(GPUs / GPUs per trial)`` on a GPU cluster, one per
    CPU (a trial's worker gets a fraction of it) on a CPU-only one. A request beyond that is
    lowered, with a warning: the extra trials would wait on worker-group start forever."""
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
    if scaling.use_gpu is not False and gpus > 0:
        workers = scaling.num_workers or gpus / scaling.gpus_per_worker
        fits = max(1, math.floor(gpus / (workers * scaling.gpus_per_worker)))
        fits = min(fits, max(1, math.floor(cpus / (workers + TRIAL_CPU))))  # 1 CPU per worker
    else:
        fits = max(1, math.floor(cpus / (scaling.num_workers or 1)))
    if requested is not None and requested > fits:
        printer(f"warning: --max-concurrent {requested} is more than the cluster holds; "
                f"running {fits} trials at once")  # fmt: skip
    return min(requested or fits, fits)


# ---- one trial ----


def run_trial(
    config: dict[str, Any], spec: SweepSpec, data: ArtemisData, gate: RungGate | None
) -> None:
    """A Tune trial: one training run with the sampled hyperparameters; ``gate`` (with no
    trial id yet) holds its workers at each rung of successive halving."""
    trial_id = ray.tune.get_context().get_trial_id()
    model_cfg, train_cfg = override_configs(*spec.configs, config)
    outcome = run_training(
        DataSource.from_dict(spec.source),
        model_cfg,
        train_cfg,
        output=Path(spec.output) / spec.name / "trials" / trial_id,
        name=trial_run_name(spec.name, trial_id),
        scaling=Scaling(**spec.scaling),
        storage=spec.trials_storage,
        tracking_uri=spec.tracking_uri,
        experiment=spec.experiment,
        data_seed=spec.seed,
        prep=UtterancePrep(**spec.prep),
        parent_run_id=parent_run(spec),
        data=data,
        callbacks=[TuneReportCallback()],
        feature_cache=feature_cache_root(spec.storage),  # one for every trial and sweep there
        rung_gate=dataclasses.replace(gate, trial_id=trial_id) if gate else None,
        printer=lambda line: print(f"[{trial_id}] {line}", flush=True),
    )
    if not _reported_to_tune():
        # The Train run had ended before the sweep's driver died, and resumed it trained and
        # reported nothing. Without a result, Tune ends the trial on the last one it saved
        # (the sweep would call the finished trial pruned), or fails the sweep if it saved none.
        ray.tune.report(outcome.metrics)


def _reported_to_tune() -> bool:
    """Whether this trial has passed Tune a result since it started, or has one waiting:
    what ``TuneReportCallback`` forwards goes through the session's queue (one item) to its
    counted reports (Ray's private session, as the callback itself uses it)."""
    from ray.train._internal.session import get_session

    session = get_session()
    waiting = session._inter_actor_queue
    return session.iteration > 0 or (waiting is not None and not waiting.empty())


def run_search(spec: SweepSpec, *, resume: bool = False, printer: Printer = print) -> SweepOutcome:
    """Run (or resume) a sweep; register the best finished trial's model."""
    started = time.perf_counter()
    search = spec.search_config
    if not resume:  # first: a driver killed from here on leaves a sweep --resume can find
        save_spec(spec)
    ensure_ray(printer)
    source = DataSource.from_dict(spec.source)
    printer("checking the data (every image is decoded once)...")
    data = load_artemis(
        source,
        seed=spec.seed,
        decode_images=True,
        prep=UtterancePrep(**spec.prep),
        progress=printer,
    )
    printer(data.report.summary())
    created: list[bool] = []
    parent = parent_run(spec, created)
    client = client_for(spec.tracking_uri)
    if created[0]:
        client.set_tag(parent, SWEEP_KIND_TAG, "sweep")
        client.log_dict(parent, data.report.to_dict(), "data_report.json")
    printer(f"sweep {spec.name}: MLflow run {parent} at {redact(spec.tracking_uri)}")

    scaling = Scaling(**spec.scaling)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, spec=spec, data=data, gate=_rung_gate(spec)),
        {"CPU": TRIAL_CPU},
    )
    path = f"{spec.storage.rstrip('/')}/{spec.name}"
    # Tune saves the sweep's state at most every 10 s by default: a driver killed in that
    # window would run a just-finished trial again on --resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    try:
        _encode_once(spec, source, data, printer)
        if resume and ray.tune.Tuner.can_restore(path):
            printer(f"resuming {path}")
            TrialRecorder.remember(spec)  # before Tune unpickles the sweep's recorder
            tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_errored=False)
        else:  # new, or stopped before Tune saved anything: no trial had started
            tuner = _new_tuner(spec, search, trainable, scaling.concurrent_runs)
        grid = tuner.fit()
        rows = trial_rows(spec, grid)
        if grid.num_terminated + grid.num_errors < len(grid):  # Tune returns on Ctrl-C
            for row in rows:  # the interrupted trials: --resume reopens their runs
                if row.state == "unfinished" and row.run_id:
                    client.set_tag(row.run_id, TRIAL_STATE_TAG, "interrupted")
                    client.set_terminated(row.run_id, status="KILLED")
            client.set_terminated(parent, status="KILLED")
            printer(f"sweep {spec.name} interrupted: continue it with --resume --name {spec.name}")
            elapsed = time.perf_counter() - started
            return SweepOutcome(spec.name, parent, rows, None, None, elapsed, complete=False)
        champion, registered = choose_and_register(spec, rows, printer)
        log_sweep(spec, search, parent, rows, champion, registered, printer)
    except BaseException as e:
        mark_failed(spec.tracking_uri, parent, e)
        raise
    client.set_terminated(parent, status="FINISHED")
    return SweepOutcome(
        spec.name, parent, rows, champion, registered, time.perf_counter() - started
    )


def _encode_once(spec: SweepSpec, source: DataSource, data: ArtemisData, printer: Printer):
    """A frozen encoder's feature cache, written before any trial starts: concurrent trials
    would otherwise all encode the images, then all but one throw their work away."""
    model_cfg, train_cfg = spec.configs
    example = ExampleConfig.for_model(model_cfg, source.lexicon, seed=train_cfg.seed)
    root = feature_cache_root(spec.storage)
    prepare_feature_cache(data, example, model_cfg, train_cfg, root, printer)


def _new_tuner(spec: SweepSpec, search: SearchConfig, trainable, concurrency: int):
    sampler = TPESampler(seed=spec.seed, n_startup_trials=search.tpe_startup_trials)
    searcher = PruningOptunaSearch(sampler=sampler)
    scheduler, searcher = _scheduler(spec, search, searcher, concurrency)
    return ray.tune.Tuner(
        trainable,
        param_space=tune_space(search),
        tune_config=ray.tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=search.num_samples,
            # successive halving's limiter is in search_alg: Tune's would count waiting trials
            max_concurrent_trials=concurrency if search.scheduler == "asha" else None,
        ),
        run_config=ray.tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            callbacks=[TrialRecorder(spec)],
            failure_config=ray.tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def _scheduler(spec: SweepSpec, search: SearchConfig, searcher, concurrency: int) -> tuple:
    """The sweep's scheduler and the searcher it needs. Its clock is the training step, not
    Tune's iterations: a trial restarted from a checkpoint (after a pause at a rung, or by
    --resume) counts its iterations from 1 again, but continues its steps."""
    train = spec.configs[1]
    grace = _grace_period(search, train)
    if search.scheduler == "asha":
        scheduler = FinishingASHA(
            time_attr="step",
            max_t=train.max_steps,
            grace_period=grace,
            reduction_factor=search.reduction_factor,
            stop_last_trials=False,  # a trial that reaches max_t ends itself, after its export
        )
        return scheduler, searcher
    halving = SuccessiveHalving(
        grace_period=grace,
        max_t=train.max_steps,
        reduction_factor=search.reduction_factor,
        num_samples=search.num_samples,
        max_concurrent=concurrency,
        state=_halving_state(spec),
    )
    return halving, HalvingLimiter(searcher, concurrency, halving)


def _grace_period(search: SearchConfig, train: TrainConfig) -> int:
    return min(search.grace_period * train.val_every, train.max_steps)


def _halving_state(spec: SweepSpec) -> str:
    """The rungs' file: not in Tune's own folder, which a resumed Tune copies back over
    itself."""
    return f"{spec.trials_storage}/{HALVING_STATE}"


def _rung_gate(spec: SweepSpec) -> RungGate | None:
    """The gate of :func:`_scheduler`'s successive halving, for its trials (which fill in
    their ids): built here in the driver, beside the scheduler it waits on."""
    search = spec.search_config
    if search.scheduler != "halving":
        return None
    train = spec.configs[1]
    steps = rungs(_grace_period(search, train), train.max_steps, search.reduction_factor)
    return RungGate(_halving_state(spec), "", tuple(steps)) if steps else None
