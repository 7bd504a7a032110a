"""What a sweep leaves in MLflow: each trial's run kept true to what Tune did with it, the
trial table, the champion in the model registry, Optuna's plots on the parent run."""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ray
import ray.tune
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from sevlm.config import SearchConfig
from sevlm.tracking import (
    client_for,
    find_or_create_run,
    find_run,
    redact,
    redact_in,
    without_credentials,
)
from sevlm_train.driver import (
    ERROR_TAG,
    MODEL_URI_TAG,
    Printer,
    mark_failed,
)
from sevlm_train.sweep_spec import SweepSpec, parent_run, trial_run_name, tune_space

TRIAL_STATE_TAG = "sevlm.trial_state"
RUN_STATES = {"FINISHED": "finished", "KILLED": "pruned", "FAILED": "failed"}
"""A trial's state in the summary, from its MLflow run's status."""


class TrialRecorder(ray.tune.Callback):
    """Keeps each trial's MLflow run true to what Tune did with it: a trial stopped early is
    ``KILLED`` (tagged pruned), one that errored is ``FAILED`` with its error, even when it
    died before it could say so itself.

    Tune pickles it into the sweep's storage (``tuner.pkl``) and ``--resume`` unpickles it:
    it pickles its tracking URI redacted, and unpickled takes the URI (credentials and all)
    that :meth:`remember` saw in this process for the same store.
    """

    uris: ClassVar[dict[str, str]] = {}
    """The tracking URIs this process uses, by their form without credentials."""

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        self.remember(spec)

    @classmethod
    def remember(cls, spec: SweepSpec) -> None:
        cls.uris[without_credentials(spec.tracking_uri)] = spec.tracking_uri

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "spec": self.spec.redacted()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        spec = state["spec"]
        uri = self.uris.get(without_credentials(spec.tracking_uri), spec.tracking_uri)
        self.__dict__.update(state, spec=dataclasses.replace(spec, tracking_uri=uri))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._guarded(self._complete, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._guarded(self._error, trial)

    def _guarded(self, record, trial) -> None:
        try:
            record(trial)
        except Exception as e:  # a tracking hiccup must not end the sweep
            error = redact_in(str(e), self.spec.tracking_uri)
            print(f"warning: could not record trial {trial.trial_id} in MLflow: {error}")

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
        client.set_tag(run_id, TRIAL_STATE_TAG, f"pruned at step {steps}")
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
        found = find_run(self.spec.tracking_uri, self.spec.experiment, name)
        if found is not None:  # not find_or_create_run: that would reopen a finished run
            return found.info.run_id
        run_id, _ = find_or_create_run(
            self.spec.tracking_uri,
            self.spec.experiment,
            name,
            {"trial": trial.config},
            parent_run(self.spec),
        )
        return run_id


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


def trial_rows(spec: SweepSpec, grid) -> list[TrialRow]:
    """Each trial's figures, from Tune's results and the trial's MLflow run."""
    rows, started = [], {}
    for result in grid:
        trial_id = result.metrics["trial_id"]  # Tune fills it in even before a first report
        run = find_run(spec.tracking_uri, spec.experiment, trial_run_name(spec.name, trial_id))
        started[trial_id] = run.info.start_time if run else float("inf")
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
    return sorted(rows, key=lambda r: (started[r.trial_id], r.trial_id))  # in the order run


def choose_and_register(spec: SweepSpec, rows, printer: Printer):
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


def log_sweep(spec, search, parent, rows, champion, registered, printer: Printer) -> None:
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
    uri = redact(spec.tracking_uri)
    ui = (
        f"open {uri}"
        if uri.startswith("http")
        else f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    )
    out += ["", "look at the trials:", f"  {ui}"]
    if outcome.registered:
        out += [
            "use the best model:",
            f"  sevlm explain --model {outcome.registered} --tracking-uri {uri} painting.jpg",
            f"  sevlm evaluate --model {outcome.registered} --tracking-uri {uri}",
        ]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
