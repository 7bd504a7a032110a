"""MLflow helpers: where runs go, reaching the store, logging that survives restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sevlm.tracking import (
    ERROR_TAG,
    MetricLogger,
    TrackingError,
    check_reachable,
    client_for,
    find_or_create_run,
    flatten,
    resolve_tracking_uri,
    without_secrets,
)


def test_tracking_uri_resolution(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"  # local, absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///rel.db") == f"sqlite:///{tmp_path}/rel.db"
    assert resolve_tracking_uri("runs/mlruns") == (tmp_path / "runs" / "mlruns").as_uri()


def test_a_bare_db_path_is_a_sqlite_store(tmp_path: Path, monkeypatch) -> None:
    """`--tracking-uri ./mlflow.db`, the default as the help writes it, is that SQLite file
    (it was a file store named mlflow.db, which MLflow refused with a misleading error)."""
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("./mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "runs/track.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/runs/track.db"


def test_unreachable_server_is_a_clear_error() -> None:
    started = time.perf_counter()
    with pytest.raises(TrackingError, match=r"cannot reach the MLflow tracking store at http"):
        check_reachable("http://127.0.0.1:9")  # nothing listens on the discard port
    assert time.perf_counter() - started < 60  # no long retry loop before saying so


def test_an_unreachable_server_error_hides_the_password() -> None:
    """The CLI prints the error; in a trial its traceback lands in Tune's error file."""
    with pytest.raises(TrackingError) as caught:
        check_reachable("http://user:secret@127.0.0.1:9/")
    assert "tracking store at http://***@127.0.0.1:9/" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert caught.value.__suppress_context__  # MLflow's error, quoting it, is not chained


def test_an_error_quoting_the_password_is_replaced() -> None:
    uri = "https://user:secret@mlflow.example:5000"
    quoting = RuntimeError(f"API request to {uri}/api/2.0/mlflow/runs/get failed")
    safe = without_secrets(quoting, uri)
    assert isinstance(safe, TrackingError) and "secret" not in str(safe)
    assert str(safe) == (
        "RuntimeError: API request to https://***@mlflow.example:5000/api/2.0/mlflow/runs/get "
        "failed"
    )
    other = ValueError("no such metric")
    assert without_secrets(other, uri) is other


def test_runs_are_found_again_by_name(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = {"model": {"w_cl": 0.5, "vision": {"hidden_size": 128}}, "train": {"lr": 0.001}}
    run_id, created = find_or_create_run(uri, "exp", "run-a", params)
    again, created_again = find_or_create_run(uri, "exp", "run-a", params)
    other, _ = find_or_create_run(uri, "exp", "run-b", params)
    assert created and not created_again and again == run_id and other != run_id
    logged = client_for(uri).get_run(run_id).data.params
    assert logged == {"model.w_cl": "0.5", "model.vision.hidden_size": "128", "train.lr": "0.001"}
    assert flatten({"a": {"b": 1}}) == {"a.b": "1"}


def test_a_failed_run_found_again_runs_without_its_old_error(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id, _ = find_or_create_run(uri, "exp", "run", {})
    client_for(uri).set_tag(run_id, ERROR_TAG, "RuntimeError: the worker died")
    client_for(uri).set_terminated(run_id, status="FAILED")
    assert find_or_create_run(uri, "exp", "run", {}) == (run_id, False)
    run = client_for(uri).get_run(run_id)
    assert run.info.status == "RUNNING" and ERROR_TAG not in run.data.tags


class FlakyClient:
    """Fails the first ``failures`` calls of each method, then records what it gets."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.logged = failures, 0, []

    def get_metric_history(self, run_id, key):
        return self._maybe_fail([])

    def log_batch(self, run_id, metrics):
        self._maybe_fail(None)
        self.logged.extend((m.key, m.step) for m in metrics)

    def _maybe_fail(self, value):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("tracking server hiccup")
        return value


def _logger(client: FlakyClient) -> MetricLogger:
    logger = MetricLogger("sqlite:///:memory:", "run", retries=2, backoff_s=0.0, pause_s=3600)
    logger.client = client
    return logger


def test_transient_errors_are_retried() -> None:
    client = FlakyClient(failures=2)
    logger = _logger(client)
    logger.log({"train/loss": 1.0}, step=1)
    assert client.logged == [("train/loss", 1)] and logger.failures == 0


def test_a_lasting_outage_never_raises(caplog) -> None:
    client = FlakyClient(failures=10**6)
    logger = _logger(client)
    logger.log({"train/loss": 1.0}, step=1)  # must not raise into training
    assert client.logged == [] and logger.failures == 1
    assert "going on" in caplog.text


def test_an_outage_pauses_logging_instead_of_stalling_training() -> None:
    client = FlakyClient(failures=10**6)
    logger = _logger(client)
    logger.log({"train/loss": 1.0}, step=1)
    calls = client.calls
    for step in range(2, 50):
        logger.log({"train/loss": 1.0}, step=step)
    assert client.calls == calls  # paused: no more calls to a store that is down
    assert logger.dropped == 49  # the first call's metric too


def test_an_outage_within_one_call_pauses_at_once_and_counts_what_it_lost() -> None:
    """A first log of several keys asks the store for each key's history: once one request
    fails, the rest of the call waits for nothing and every metric not logged is counted."""
    client = FlakyClient(failures=10**6)
    logger = _logger(client)
    logger.log({f"train/term{i}": 1.0 for i in range(8)}, step=1)
    assert client.calls == 3 and logger.failures == 1  # one key's retries, not eight keys'
    assert logger.dropped == 8
    logger = _logger(ReadOnlyClient(failures=0))
    logger.log({"a": 1.0, "b": 2.0}, step=1)  # the histories answer, the batch fails
    assert logger.failures == 1 and logger.dropped == 2


class ReadOnlyClient(FlakyClient):
    """Answers reads; every write fails."""

    def log_batch(self, run_id, metrics):
        raise ConnectionError("the store takes no writes")


def test_replayed_steps_are_not_logged_twice(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id, _ = find_or_create_run(uri, "exp", "run", {})
    first = MetricLogger(uri, run_id)
    for step in (1, 2, 3, 4):
        first.log({"train/loss": float(step)}, step)
    restarted = MetricLogger(uri, run_id)  # a new worker group after a failure at step 5
    for step in (3, 4, 5, 6):  # resumed from the checkpoint at step 2
        restarted.log({"train/loss": 10.0 + step}, step)
    history = client_for(uri).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
