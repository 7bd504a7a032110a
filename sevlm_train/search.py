"""A hyperparameter search: Ray Tune with Optuna's TPE and ASHA, each trial a Ray Train run.

The driver checks the data once, opens the sweep's parent MLflow run and fits a Tuner. Each
trial is a function (Ray Train V2's pattern) that calls
:func:`sevlm_train.driver.run_training` with its sampled hyperparameters and Tune's report
callback, so every trial is a nested child MLflow run with its best checkpoint logged as a
model. At the end the best finished trial's model is registered under an alias (``champion``).

ASHA and Optuna: Ray tells Optuna that a trial ASHA stopped is *complete*, with the
under-trained score it had when stopped, and TPE would take that as a finished result.
:class:`PruningOptunaSearch` tells Optuna such trials were *pruned* instead (their
intermediate scores were reported as they came), which is what TPE's model expects.

A trial's run name is ``<sweep>-<trial id>``: when a sweep is resumed, an interrupted trial
finds its Ray Train checkpoints and its MLflow run by that name and continues both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.tune
from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sevlm.artemis import ArtemisData, DataSource, load_artemis
from sevlm.config import ModelConfig, SearchConfig, TrainConfig, override_configs
from sevlm.text import UtterancePrep
from sevlm.tracking import client_for, find_or_create_run, resolve_tracking_uri, runs_named
from sevlm_train.driver import (
    ERROR_TAG,
    MODEL_URI_TAG,
    Scaling,
    ensure_ray,
    mark_failed,
    run_training,
)

Printer = Callable[[str], None]
SPEC_FILE = "sevlm_sweep.json"
"""The sweep's settings, beside Tune's state: ``--resume`` needs nothing else."""
TRIAL_STATE_TAG = "sevlm.trial_state"
TRIAL_CPU = 0.05
"""The trial actor only drives a TorchTrainer; its workers hold the real resources."""
SWEEP_KIND_TAG = "sevlm.kind"
RUN_STATES = {"FINISHED": "finished", "KILLED": "pruned", "FAILED": "failed"}
"""A trial's state in the summary, from its MLflow run's status."""


@dataclass
class SweepSpec:
    """Everything a sweep needs, saved with it so that ``--resume`` rebuilds the same sweep."""

    name: str
    source: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    search: dict[str, Any]
    scaling: dict[str, Any]
    storage: str
    output: str
    tracking_uri: str
    experiment: str
    register_as: str
    seed: int = 0
    prep: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def search_config(self) -> SearchConfig:
        return SearchConfig(**self.search)

    @property
    def configs(self) -> tuple[ModelConfig, TrainConfig]:
        return ModelConfig.from_dict(self.model), TrainConfig(**self.train)

    @property
    def metric(self) -> str:
        return self.train["select_metric"]

    @property
    def mode(self) -> str:
        return self.train["select_mode"]

    @property
    def trials_storage(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}-trials"


def make_spec(
    name: str,
    source: DataSource,
    model: ModelConfig,
    train: TrainConfig,
    search: SearchConfig,
    scaling: Scaling,
    *,
    storage: str,
    output: Path,
    tracking_uri: str | None,
    experiment: str,
    register_as: str,
    seed: int,
    prep: UtterancePrep,
) -> SweepSpec:
    """A new sweep's spec: trials use ``search.trial`` settings and select by the metric."""
    model, train = override_configs(model, train, search.trial)
    metric, mode = search.metric or train.select_metric, search.mode or train.select_mode
    model, train = override_configs(model, train, {"select_metric": metric, "select_mode": mode})
    return SweepSpec(
        name=name,
        source=source.describe(),
        model=model.to_dict(),
        train=train.to_dict(),
        search=search.to_dict(),
        scaling=dataclasses.asdict(scaling),
        storage=storage if "://" in storage else str(Path(storage).absolute()),
        output=str(Path(output).absolute()),
        tracking_uri=resolve_tracking_uri(tracking_uri),
        experiment=experiment,
        register_as=register_as,
        seed=seed,
        prep=dataclasses.asdict(prep),
    )


# ---- the sweep's folder in storage (local, NFS or s3://) ----


def _fs(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return pyarrow.fs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage)))


def save_spec(spec: SweepSpec) -> None:
    fs, root = _fs(spec.storage)
    fs.create_dir(f"{root}/{spec.name}", recursive=True)
    with fs.open_output_stream(f"{root}/{spec.name}/{SPEC_FILE}") as f:
        f.write(json.dumps(dataclasses.asdict(spec), indent=2).encode())


def load_spec(storage: str, name: str | None) -> SweepSpec:
    """A saved sweep's spec: the one named, else the newest sweep in ``storage``."""
    fs, root = _fs(storage)
    if name is None:
        found = [
            info
            for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory
            and fs.get_file_info(f"{info.path}/{SPEC_FILE}").type == pyarrow.fs.FileType.File
        ]
        if not found:
            raise ValueError(f"--resume: no sweep to resume in {storage}")
        if len(found) > 1 and any(info.mtime_ns is None for info in found):
            raise ValueError(f"--resume: {storage} cannot tell which sweep is newest (object "
                             "stores keep no folder times); give --name")  # fmt: skip
        name = max(found, key=lambda info: info.mtime_ns or 0).base_name
    path = f"{root}/{name}/{SPEC_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise ValueError(f"--resume: no sweep named {name!r} in {storage}")
    with fs.open_input_stream(path) as f:
        return SweepSpec(**json.loads(f.read()))


def sweep_exists(storage: str, name: str) -> bool:
    fs, root = _fs(storage)
    return fs.get_file_info(f"{root}/{name}").type != pyarrow.fs.FileType.NotFound


# ---- the search space, the searcher, the scheduler ----


def tune_space(search: SearchConfig) -> dict[str, Any]:
    """The config's space as Tune distributions."""
    make = {
        "uniform": ray.tune.uniform,
        "loguniform": ray.tune.loguniform,
        "randint": ray.tune.randint,
        "choice": lambda *values: ray.tune.choice(list(values)),
    }
    return {
        key: make[kind](*args) for key, spec in search.space.items() for kind, args in spec.items()
    }


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped before its end was pruned."""

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


def run_trial(config: dict[str, Any], spec: SweepSpec, data: ArtemisData) -> None:
    """A Tune trial: one training run with the sampled hyperparameters."""
    trial_id = ray.tune.get_context().get_trial_id()
    model_cfg, train_cfg = override_configs(*spec.configs, config)
    run_training(
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
        printer=lambda line: print(f"[{trial_id}] {line}", flush=True),
    )


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def parent_run(spec: SweepSpec, created: list[bool] | None = None) -> str:
    """The sweep's MLflow run (found by name, or created with the search's settings)."""
    params = {
        "search": {**spec.search, "searcher": "optuna.TPE", "scheduler": "ASHA", "seed": spec.seed},
        "model": spec.model,
        "train": spec.train,
        "data": spec.source,
    }
    run_id, new = find_or_create_run(spec.tracking_uri, spec.experiment, spec.name, params)
    if created is not None:
        created.append(new)
    return run_id


class TrialRecorder(ray.tune.Callback):
    """Keeps each trial's MLflow run true to what Tune did with it: a trial ASHA stopped is
    ``KILLED`` (tagged pruned), one that errored is ``FAILED`` with its error, even when it
    died before it could say so itself."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._guarded(self._complete, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._guarded(self._error, trial)

    def _guarded(self, record, trial) -> None:
        try:
            record(trial)
        except Exception as e:  # a tracking hiccup must not end the sweep
            print(f"warning: could not record trial {trial.trial_id} in MLflow: {e}")

    def _complete(self, trial) -> None:
        run_id = self._run(trial)
        client = client_for(self.spec.tracking_uri)
        run = client.get_run(run_id)
        if trial.last_result.get("final"):  # it ran to its end: it exported its model
            if TRIAL_STATE_TAG in run.data.tags:  # "interrupted" before a --resume
                client.delete_tag(run_id, TRIAL_STATE_TAG)
            if MODEL_URI_TAG not in run.data.tags and run.info.status == "RUNNING":
                mark_failed(self.spec.tracking_uri, run_id, "ended without exporting a model")
            return
        steps = trial.last_result.get("step", 0)
        client.set_tag(run_id, TRIAL_STATE_TAG, f"pruned by ASHA at step {steps}")
        if ERROR_TAG in run.data.tags:  # the stopped trial's own last word
            client.delete_tag(run_id, ERROR_TAG)
        client.set_terminated(run_id, status="KILLED")

    def _error(self, trial) -> None:
        lines = []
        if trial.error_file and Path(trial.error_file).is_file():
            lines = Path(trial.error_file).read_text().strip().splitlines()
        run_id = self._run(trial)
        client = client_for(self.spec.tracking_uri)
        client.set_tag(run_id, TRIAL_STATE_TAG, "failed")
        if ERROR_TAG in client.get_run(run_id).data.tags:  # the trial said what went wrong
            client.set_terminated(run_id, status="FAILED")
        else:
            mark_failed(self.spec.tracking_uri, run_id, lines[-1] if lines else "the trial failed")

    def _run(self, trial) -> str:
        """The trial's run, as it is (created here when the trial died before it made one)."""
        name = trial_run_name(self.spec.name, trial.trial_id)
        client = client_for(self.spec.tracking_uri)
        experiment = client.get_experiment_by_name(self.spec.experiment)
        found = runs_named(client, experiment.experiment_id, name) if experiment else []
        if found:  # not find_or_create_run: that would reopen a finished run
            return found[0].info.run_id
        run_id, _ = find_or_create_run(
            self.spec.tracking_uri,
            self.spec.experiment,
            name,
            {"trial": trial.config},
            parent_run(self.spec),
        )
        return run_id


# ---- the sweep ----


@dataclass
class TrialRow:
    """One trial, as the summary shows it."""

    trial_id: str
    params: dict[str, Any]
    state: str
    steps: int
    final: float | None
    best: float | None
    run_id: str | None
    model_uri: str | None


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    rows: list[TrialRow]
    champion: TrialRow | None
    registered: str | None
    elapsed_s: float
    complete: bool = True
    """False when the sweep was interrupted (Ctrl-C, SIGTERM): resume it with --resume."""


def run_search(spec: SweepSpec, *, resume: bool = False, printer: Printer = print) -> SweepOutcome:
    """Run (or resume) a sweep; register the best finished trial's model."""
    started = time.perf_counter()
    search = spec.search_config
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
    printer(f"sweep {spec.name}: MLflow run {parent} at {spec.tracking_uri}")

    scaling = Scaling(**spec.scaling)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, spec=spec, data=data), {"CPU": TRIAL_CPU}
    )
    path = f"{spec.storage.rstrip('/')}/{spec.name}"
    # Tune saves the sweep's state at most every 10 s by default: a driver killed in that
    # window would run a just-finished trial again on --resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    try:
        if resume:
            printer(f"resuming {path}")
            tuner = ray.tune.Tuner.restore(path, trainable=trainable, resume_errored=False)
        else:
            save_spec(spec)
            tuner = _new_tuner(spec, search, trainable, scaling.concurrent_runs)
        grid = tuner.fit()
        rows = _rows(spec, grid)
        if grid.num_terminated + grid.num_errors < len(grid):  # Tune returns on Ctrl-C
            for row in rows:  # the interrupted trials: --resume reopens their runs
                if row.state == "unfinished" and row.run_id:
                    client.set_tag(row.run_id, TRIAL_STATE_TAG, "interrupted")
                    client.set_terminated(row.run_id, status="KILLED")
            client.set_terminated(parent, status="KILLED")
            printer(f"sweep {spec.name} interrupted: continue it with --resume --name {spec.name}")
            elapsed = time.perf_counter() - started
            return SweepOutcome(spec.name, parent, rows, None, None, elapsed, complete=False)
        champion, registered = _choose_and_register(spec, rows, printer)
        _log_sweep(spec, search, parent, rows, champion, registered, printer)
    except BaseException as e:
        mark_failed(spec.tracking_uri, parent, e)
        raise
    client.set_terminated(parent, status="FINISHED")
    return SweepOutcome(
        spec.name, parent, rows, champion, registered, time.perf_counter() - started
    )


def _new_tuner(spec: SweepSpec, search: SearchConfig, trainable, concurrency: int):
    sampler = TPESampler(seed=spec.seed, n_startup_trials=search.tpe_startup_trials)
    searcher = PruningOptunaSearch(sampler=sampler)
    train = spec.configs[1]
    # Steps, not Tune's iterations: a trial restarted by --resume counts its iterations
    # from 1 again, but continues its steps where its checkpoint left them.
    scheduler = FinishingASHA(
        time_attr="step",
        max_t=train.max_steps,
        grace_period=min(search.grace_period * train.val_every, train.max_steps),
        reduction_factor=search.reduction_factor,
        stop_last_trials=False,  # a trial that reaches max_t ends itself, after its export
    )
    return ray.tune.Tuner(
        trainable,
        param_space=tune_space(search),
        tune_config=ray.tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=search.num_samples,
            max_concurrent_trials=concurrency,
        ),
        run_config=ray.tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            callbacks=[TrialRecorder(spec)],
            failure_config=ray.tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def _rows(spec: SweepSpec, grid) -> list[TrialRow]:
    """Each trial's figures, from Tune's results and the trial's MLflow run."""
    client = client_for(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    rows = []
    for result in grid:
        trial_id = result.metrics["trial_id"]  # Tune fills it in even before a first report
        runs = runs_named(client, experiment.experiment_id, trial_run_name(spec.name, trial_id))
        run = runs[0] if runs else None
        history = result.metrics_dataframe
        final = (result.metrics or {}).get(spec.metric)
        status = run.info.status if run else None
        state = "failed" if result.error else RUN_STATES.get(status, "unfinished")
        best = run.data.metrics.get(f"best/{spec.metric}") if run else None
        if best is None and history is not None and spec.metric in history:
            scores = history[spec.metric].dropna()
            best = (
                None
                if scores.empty
                else float(scores.max() if spec.mode == "max" else scores.min())
            )
        rows.append(
            TrialRow(
                trial_id=trial_id,
                params={k: (result.config or {}).get(k) for k in spec.search_config.space},
                state=state,
                steps=int((result.metrics or {}).get("step", 0)),
                final=final,
                best=best,
                run_id=run.info.run_id if run else None,
                model_uri=run.data.tags.get(MODEL_URI_TAG) if run and state == "finished" else None,
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def _choose_and_register(spec: SweepSpec, rows, printer: Printer):
    """The best finished trial with a model, registered as ``register_as@champion``."""
    finished = [r for r in rows if r.model_uri and r.best is not None]
    if not finished:
        printer("warning: no trial finished with a model; nothing registered")
        return None, None
    pick = max if spec.mode == "max" else min
    champion = pick(finished, key=lambda r: r.best)
    version = register_champion(spec.tracking_uri, spec.register_as, champion)
    registered = f"models:/{spec.register_as}@champion"
    printer(f"registered {champion.model_uri} as {spec.register_as} version {version} "
            f"({registered})")  # fmt: skip
    return champion, registered


def register_champion(uri: str, name: str, champion: TrialRow, alias: str = "champion") -> str:
    """Register the champion's model (once: a resumed sweep reuses the version) and point
    the alias at it."""
    import mlflow

    client = client_for(uri)
    found = client.search_model_versions(f"name = '{name}' and run_id = '{champion.run_id}'")
    if found:
        version = found[0].version
    else:
        mlflow.set_tracking_uri(uri)
        version = mlflow.register_model(champion.model_uri, name).version
    client.set_registered_model_alias(name, alias, version)
    return str(version)


def _log_sweep(spec, search, parent, rows, champion, registered, printer: Printer) -> None:
    """The parent run's record: the trial table, the best trial, Optuna's plots."""
    client = client_for(spec.tracking_uri)
    client.log_dict(parent, [dataclasses.asdict(r) for r in rows], "trials.json")
    counts = {
        state: sum(r.state == state for r in rows) for state in ("finished", "pruned", "failed")
    }
    for state, count in counts.items():
        client.log_metric(parent, f"trials/{state}", count)
    if champion is not None:
        client.log_metric(parent, f"best/{spec.metric}", champion.best)
        client.set_tag(parent, "sevlm.best_trial", champion.trial_id)
        client.set_tag(parent, "sevlm.best_run_id", champion.run_id)
        client.set_tag(parent, "sevlm.registered_model", registered)
        for key, value in champion.params.items():  # tags: a resumed sweep may change them
            client.set_tag(parent, f"sevlm.best.{key}", value)
    with tempfile.TemporaryDirectory() as folder:
        for problem in optuna_plots(rows, search, spec.mode, Path(folder)):
            printer(f"warning: {problem}")
        client.log_artifacts(parent, folder, "optuna")


def optuna_plots(rows: list[TrialRow], search: SearchConfig, mode: str, folder: Path) -> list[str]:
    """Optuna's optimization history, parameter importances and parallel coordinates, as
    PNGs; returns the plots that could not be drawn, and why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = OptunaSearch.convert_search_space(tune_space(search))
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for row in rows:
        if any(row.params.get(key) is None for key in distributions):
            continue  # a trial that failed before Tune recorded its config
        complete = row.state == "finished" and row.final is not None
        study.add_trial(
            optuna.trial.create_trial(
                params=row.params,
                distributions=distributions,
                value=row.final if complete else None,
                state=TrialState.COMPLETE if complete
                else TrialState.PRUNED if row.state == "pruned" else TrialState.FAIL,
            )
        )  # fmt: skip
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    needs = {"optimization_history": 1, "param_importances": 2, "parallel_coordinate": 1}
    problems = []
    for name, draw in (
        ("optimization_history", plots.plot_optimization_history),
        ("param_importances", plots.plot_param_importances),
        ("parallel_coordinate", plots.plot_parallel_coordinate),
    ):
        if complete < needs[name]:  # Optuna would draw an empty plot
            problems.append(f"Optuna plot {name} needs {needs[name]} finished trials")
            continue
        try:
            axes = draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
        except Exception as e:  # a plot is a nicety: never fail a finished sweep for one
            problems.append(f"Optuna plot {name} not drawn: {type(e).__name__}: {e}")
    return problems


def format_summary(outcome: SweepOutcome, spec: SweepSpec) -> str:
    """The trial table, the champion, and how to look at both."""
    keys = list(spec.search_config.space)
    header = ["trial", "state", "steps", *keys, f"final {spec.metric}", "best"]
    lines = [header]
    for r in outcome.rows:
        lines.append(
            [r.trial_id, r.state, str(r.steps), *(_fmt(r.params.get(k)) for k in keys),
             _fmt(r.final), _fmt(r.best)]
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )
    out = [
        table,
        "",
        f"sweep {spec.name}: {len(outcome.rows)} trials in {outcome.elapsed_s / 60:.1f} min",
    ]
    if outcome.champion is not None:
        c = outcome.champion
        out.append(f"best trial {c.trial_id}: {spec.metric} {c.best:.4f} "
                   f"({', '.join(f'{k}={_fmt(v)}' for k, v in c.params.items())})")  # fmt: skip
        copy = Path(spec.output) / spec.name / "trials" / c.trial_id / "model"
        out.append(f"best model: {outcome.registered} ({c.model_uri}), a copy in {copy}")
    uri = spec.tracking_uri
    ui = (
        f"open {uri}"
        if uri.startswith("http")
        else f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )
    out += ["", "look at the trials:", f"  {ui}"]
    if outcome.registered:
        out += [
            "use the best model:",
            f'  MLFLOW_TRACKING_URI={spec.tracking_uri} python -c "import mlflow, pandas as pd; '
            "from sevlm.mlflow_model import encode_image; "
            f"m = mlflow.pyfunc.load_model('{outcome.registered}'); "
            "print(m.predict(pd.DataFrame({'image': [encode_image('painting.jpg')]})))\"",
        ]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
