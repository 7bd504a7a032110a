"""The search and the cluster, for real: `ray job submit` to a local head with a real
`mlflow server`, a sweep resumed after its driver is killed, training across two nodes.

Every process these tests start runs in a session of its own and is stopped by session id:
nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from sevlm.tracking import client_for

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = "checkpoint_manager_snapshot.json"
BIN = Path(sys.executable).parent
TRIAL = {
    "max_steps": 8, "val_every": 4, "batch_size": 4, "log_every": 2,
    "val_max_images": 6, "max_new_tokens": 6, "warmup_steps": 0,
}  # fmt: skip


def sweep_config(folder: Path, samples: int, grace_period: int = 1, **search) -> Path:
    """A sweep of short trials, one at a time (so the order of events is known); no trial is
    stopped early when ``grace_period`` is 2, their number of validations."""
    path = folder / "sweep.yaml"
    search |= {"num_samples": samples, "max_concurrent": 1, "grace_period": grace_period,
               "trial": TRIAL}  # fmt: skip
    path.write_text(json.dumps({"search": search}))  # JSON is YAML
    return path


def search_args(sample, folder: Path, config: Path, name: str, uri: str, *extra: str) -> list:
    """``tune/search.py`` on the sample, with its storage and models under ``folder``."""
    return [sys.executable, str(REPO / "tune/search.py"), "--data", str(sample.out),
            "--config", str(config), "--name", name, "--storage", str(folder / "storage"),
            "--output", str(folder / "runs"), "--tracking-uri", uri, *extra]  # fmt: skip


def start_sweep(
    args: list, env: dict[str, str], folder: Path, log_name: str = "first.log"
) -> subprocess.Popen:
    """Start a sweep in a session of its own (see :func:`stop_session`), its output in
    ``folder/log_name``."""
    with open(folder / log_name, "w") as log:  # the child has its own copy of the file
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=folder,
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes of one session (the field after the process group in /proc/PID/stat);
    zombies have ended, only their parent has not reaped them yet."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def stop_session(process: subprocess.Popen, grace_s: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and all it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while session_pids(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not session_pids(process.pid):
            break
    process.wait(timeout=10)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return env


def wait_for(check, timeout_s: float, what: str, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def child_runs(uri: str, parent_name: str, experiment: str = "sevlm") -> tuple:
    """(the sweep's parent run, its child runs)."""
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None, []
    runs = client.search_runs([found.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("sevlm.run_name") == parent_name]
    if not parents:
        return None, []
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


@pytest.fixture
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real `mlflow server` with a database backend, on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 (open for the server's lifetime)
    process = subprocess.Popen(
        [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env(),
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(uri), 90, f"mlflow server at {uri} ({folder / 'server.log'})")
        yield uri
    finally:
        stop_session(process)
        log.close()


def _answers(uri: str) -> bool:
    try:
        client_for(uri).search_experiments(max_results=1)
        return True
    except Exception:
        return False


@pytest.fixture  # not shared: a second Ray on the machine confuses Ray's "auto" address
def ray_head() -> Iterator[dict]:
    """A real local head (`ray start --head`, dashboard on 127.0.0.1) for job submission,
    with Ray's token authentication on: its own token, given to the CLI by environment."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    token = Path(temp) / "token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    dashboard = free_port()
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--num-cpus", "2",
         "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
         "--temp-dir", temp, "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env(**auth),
    )  # fmt: skip
    head = {"address": f"http://127.0.0.1:{dashboard}", "token": token.read_text(), "env": auth}
    try:
        wait_for(lambda: job_api(head, "") is not None, 120, f"the Ray head at {head['address']}")
        yield head
    finally:
        stop_session(process)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def job_api(head: dict, path: str):
    """GET the dashboard's job API with the cluster's token (None: not answering yet)."""
    request = urllib.request.Request(
        f"{head['address']}/api/jobs/{path}", headers={"Authorization": f"Bearer {head['token']}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def test_ray_job_submit_sweep_tracked_in_a_mlflow_server(ray_head, mlflow_server, sample, tmp_path):
    """The README's cluster recipe, on one machine: a sweep submitted as a Ray job, tracked
    in a real MLflow server; a trial that fails is recorded and the sweep goes on; the
    champion is registered and loads from the registry."""
    config = sweep_config(tmp_path, samples=3)
    env = {
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": mlflow_server,
        # the first trial to reach step 3 fails, once; no worker restart saves it
        "SEVLM_FAIL_AT_STEP": "3",
        "SEVLM_FAIL_MARKER": str(tmp_path / "fault"),
    }
    command = [
        BIN / "ray", "job", "submit", "--address", ray_head["address"],
        "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"env_vars": env}),
        "--submission-id", "sevlm-test-sweep", "--no-wait", "--",
        "python", "tune/search.py", "--data", str(sample.out), "--config", str(config),
        "--name", "jobsweep", "--storage", str(tmp_path / "storage"),
        "--output", str(tmp_path / "runs"), "--max-failures", "0",
    ]  # fmt: skip
    submitted = subprocess.run(
        [str(c) for c in command],
        env=child_env(**ray_head["env"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    def finished():
        job = job_api(ray_head, "sevlm-test-sweep")
        return job and job["status"] in ("SUCCEEDED", "FAILED", "STOPPED") and job["status"]

    status = wait_for(finished, 600, "the job", interval_s=3)
    logs = job_api(ray_head, "sevlm-test-sweep/logs")["logs"]
    assert status == "SUCCEEDED", logs[-5000:]
    assert "best trial" in logs and "models:/sevlm@champion" in logs

    parent, children = child_runs(mlflow_server, "jobsweep")
    assert parent is not None and parent.info.status == "FINISHED"
    assert parent.data.params["search.space.temperature.loguniform"] == "[0.01, 1.0]"
    assert len(children) == 3
    failed = [r for r in children if r.info.status == "FAILED"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    pruned = [r for r in children if r.info.status == "KILLED"]
    # halving at step 4 compares the two that got there and keeps one (reduction factor 2)
    assert len(failed) == 1 and len(finished) == 1 and len(pruned) == 1
    assert "injected fault at step 3" in failed[0].data.tags["sevlm.error"]
    for run in finished:
        assert {"model.temperature", "model.w_cl", "model.w_vad"} <= set(run.data.params)
        assert run.data.tags["sevlm.model_uri"].startswith("models:/")
        client = client_for(mlflow_server)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/bleu4")] == [4, 8]
    assert parent.data.metrics["trials/failed"] == 1
    assert parent.data.metrics["trials/finished"] == len(finished)
    plots = {a.path for a in client_for(mlflow_server).list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png"} <= plots

    # the registry: sevlm@champion is the best finished trial's model, and it loads
    client = client_for(mlflow_server)
    version = client.get_model_version_by_alias("sevlm", "champion")
    assert version.run_id == parent.data.tags["sevlm.best_run_id"]
    assert version.run_id in {r.info.run_id for r in finished}
    import mlflow
    import pandas as pd

    from sevlm.emotions import EMOTIONS
    from sevlm.mlflow_model import encode_image

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/sevlm@champion")
    image = next(Path(sample.out, "wikiart").rglob("*.jpg"))
    Image.open(image).verify()
    answer = model.predict(pd.DataFrame({"image": [encode_image(str(image))]}))
    assert answer["emotion"][0] in (*EMOTIONS, "unknown")


def test_sweep_resumes_after_its_driver_is_killed(sample, tmp_path):
    """Kill the search driver (and the Ray it started) mid-sweep; `--resume` finishes the
    sweep without running the finished trials again."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # No early stops: a trial stopped at its first checkpoint is RUNNING with a checkpoint
    # for a moment only, and the sweep can end before the kill below catches one.
    config = sweep_config(tmp_path, samples=3, grace_period=2)
    args = search_args(sample, tmp_path, config, "killed", uri)
    env = child_env(RAY_TMPDIR=tempfile.mkdtemp(prefix="rk", dir="/tmp"))
    first = start_sweep(args, env, tmp_path)
    try:

        def one_done_one_checkpointed():
            assert first.poll() is None, "the sweep ended before a trial was caught mid-way"
            _, runs = child_runs(uri, "killed")
            done = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING"]
            # Ray Train resumes from the checkpoints its snapshot lists. One that has logged
            # its last validation (step 8) may have ended its Train run already: resumed, it
            # reports its result without training (the test below covers that window).
            saved = [
                r for r in running
                if (trials / r.info.run_name / SNAPSHOT).is_file()
                and metric_steps(uri, runs, r.info.run_name)[:1] == [4]
            ]  # fmt: skip
            return done and saved and (runs, saved[0].info.run_name)

        trials = tmp_path / "storage" / "killed-trials"
        runs, interrupted = wait_for(
            one_done_one_checkpointed, 400, "a finished trial and a checkpointed one", 0.5
        )
    finally:
        stop_session(first, grace_s=0)  # SIGTERM to the driver and its Ray, then SIGKILL
    killed_at = time.time() * 1000
    done_before = {r.info.run_name: r.info.end_time for r in runs if r.info.status == "FINISHED"}

    resumed = subprocess.run(
        [*args, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    parent, children = child_runs(uri, "killed")
    assert parent.info.status == "FINISHED"
    assert len(children) == 3  # no trial started over under a second run
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    for name, end_time in done_before.items():
        run = next(r for r in children if r.info.run_name == name)
        assert run.info.end_time == end_time < killed_at  # not run again
        trial_id = name.removeprefix("killed-")
        assert f"[{trial_id}]" not in resumed.stderr  # its trial printed nothing this time
    # the interrupted trial went on from its checkpoint, not from step 0
    # once, not also through Ray Train's patched print and its logger
    said = resumed.stdout + resumed.stderr
    assert said.count("[sevlm] resumed at step") == 1, resumed.stderr[-3000:]
    assert len(metric_steps(uri, runs, interrupted)) == len(
        set(metric_steps(uri, runs, interrupted))
    )
    table = resumed.stdout
    assert len(re.findall(r"^\w{8}\s+(finished|pruned)\s", table, re.M)) == 3, table
    assert client_for(uri).get_model_version_by_alias("sevlm", "champion").run_id in {
        r.info.run_id for r in children
    }


def test_resume_after_the_driver_died_before_tune_saved_or_after_training_ended(sample, tmp_path):
    """Two windows of a driver's death that the kill test above cannot aim at.

    1. Killed while it checks the data, before Tune saved any state: the sweep's settings are
       saved first, so --resume finds the sweep and starts its trials.
    2. The sweep's state as saved mid-trial, but the trial's Train run (and MLflow run)
       finished after it. On --resume Tune runs the trial again, its training has nothing
       left to do and reports nothing, and the trial must still pass Tune its result.
       (Without it, Tune took the saved step-4 result as the trial's last: the sweep called
       the finished trial pruned, registered no model and exited 1.)"""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "storage"
    config = sweep_config(tmp_path, samples=1, grace_period=2)
    args = search_args(sample, tmp_path, config, "ended", uri)
    env = child_env(RAY_TMPDIR=tempfile.mkdtemp(prefix="re", dir="/tmp"))
    early = start_sweep(args, env, tmp_path, "early.log")
    try:
        wait_for((storage / "ended" / "sevlm_sweep.json").is_file, 120, "the saved sweep", 0.05)
    finally:
        stop_session(early, grace_s=0)
    assert not list((storage / "ended").glob("experiment_state*"))  # Tune had saved nothing

    saved = tmp_path / "tune-state-mid-trial"
    first = start_sweep([*args, "--resume"], env, tmp_path)
    try:

        def validated_at_step_4():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            _, runs = child_runs(uri, "ended")
            running = [r for r in runs if r.info.status == "RUNNING"]
            return running and metric_steps(uri, runs, running[0].info.run_name) == [4]

        wait_for(validated_at_step_4, 400, "the trial's first validation", 0.5)
        time.sleep(3)  # Tune saves its state every 2 s here (TUNE_GLOBAL_CHECKPOINT_S)
        shutil.copytree(storage / "ended", saved)
        assert first.wait(timeout=400) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        stop_session(first, grace_s=0)
    _, (trial,) = child_runs(uri, "ended")
    assert trial.info.status == "FINISHED"
    assert "RUNNING" in "".join(p.read_text() for p in saved.glob("experiment_state*.json"))
    shutil.rmtree(storage / "ended")
    shutil.copytree(saved, storage / "ended")  # as if the driver died when that was saved

    resumed = subprocess.run(
        [*args, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    parent, (again,) = child_runs(uri, "ended")  # the same MLflow run, not a second one
    assert again.info.run_id == trial.info.run_id and again.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"
    assert metric_steps(uri, [again], again.info.run_name) == [4, 8]  # nothing trained again
    trial_id = trial.info.run_name.removeprefix("ended-")
    assert re.search(rf"^{trial_id}\s+finished\s", resumed.stdout, re.M), resumed.stdout[-2000:]
    champion = client_for(uri).get_model_version_by_alias("sevlm", "champion")
    assert champion.run_id == trial.info.run_id


WAITING = "rung: waiting for the sweep's verdict"


def test_halving_waits_at_the_rung_through_a_killed_driver(sample, tmp_path):
    """Successive halving for real, with the driver killed while two trials wait at the
    step-4 rung: after --resume they wait (they are not run past the rung), the third reports
    there, the best two go on from their step-4 checkpoints (each validation logged once)
    and the other is pruned at step 4."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = sweep_config(tmp_path, samples=3, reduction_factor=1.5)  # keeps 2 of 3
    storage = tmp_path / "storage"
    rungs_file = storage / "halves-trials" / "halving.json"
    args = search_args(sample, tmp_path, config, "halves", uri)
    env = child_env(RAY_TMPDIR=tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    first = start_sweep(args, env, tmp_path)
    try:

        def two_waiting():  # the second's "waiting" line reached the log, too
            rungs = json.loads(rungs_file.read_text()) if rungs_file.is_file() else None
            said = (tmp_path / "first.log").read_text().count(WAITING)
            return rungs and len(rungs["scores"][0]) == 2 and rungs["kept"][0] is None and said == 2

        wait_for(two_waiting, 400, "two trials waiting at the rung", 0.5)
    finally:
        stop_session(first, grace_s=0)

    resumed = subprocess.run(
        [*args, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    rungs = json.loads(rungs_file.read_text())
    # rungs at steps 4 and 6: the trials validate at 4 and 8, and 8 is their last report
    assert rungs["milestones"] == [4, 6] and len(rungs["scores"][0]) == 3
    arrived = list(rungs["scores"][0])  # one trial at a time: in the order they ran
    kept = rungs["kept"][0]
    assert len(kept) == 2 and kept == sorted(kept, key=rungs["scores"][0].get)
    waited = set(kept) - {arrived[-1]}  # the last to arrive went on without waiting
    said = resumed.stdout + resumed.stderr
    assert said.count("[sevlm] resumed at step 4") == len(waited) >= 1, resumed.stderr[-3000:]

    _, children = child_runs(uri, "halves")
    by_trial = {r.info.run_name.removeprefix("halves-"): r for r in children}
    assert set(by_trial) == set(arrived)
    # Each trial's workers waited at the rung for its verdict, the first run's two until it
    # was killed: no step past the rung was trained (and logged) before a pause or stop.
    assert said.count(WAITING) == 1  # the third: the others resumed past the rung
    history = client_for(uri).get_metric_history
    for trial_id, run in by_trial.items():
        steps = [m.step for m in history(run.info.run_id, "val/lm_loss")]
        train_steps = [m.step for m in history(run.info.run_id, "train/grad_norm")]
        if trial_id in kept:
            assert run.info.status == "FINISHED" and steps == [4, 8]
            assert train_steps == [2, 4, 6, 8]  # log_every 2, each step once
        else:
            assert run.info.status == "KILLED" and steps == [4] and train_steps == [2, 4]
            assert run.data.tags["sevlm.trial_state"] == "pruned at step 4"
    assert re.search(r"^\w{8}\s+pruned\s+4\s", resumed.stdout, re.M), resumed.stdout[-2000:]


def test_halving_lets_the_last_trials_of_a_rung_wait_in_their_slots(sample, tmp_path):
    """Two trials at once and no third to start: the first at the step-4 rung waits there in
    its slot (no pause, so no restart), and whichever is dropped ends at the rung: the
    waiting one by a report its gate makes at once (Tune cannot end it between reports)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = sweep_config(tmp_path, samples=2, reduction_factor=2)  # keeps 1 of 2
    storage = tmp_path / "storage"
    done = subprocess.run(
        search_args(sample, tmp_path, config, "slots", uri, "--max-concurrent", "2"),
        env=child_env(RAY_TMPDIR=tempfile.mkdtemp(prefix="rs", dir="/tmp")),
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    said = done.stdout + done.stderr
    (tmp_path / "sweep.log").write_text(said)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rungs = json.loads((storage / "slots-trials" / "halving.json").read_text())
    first = next(iter(rungs["scores"][0]))  # the first to report at the rung
    kept = rungs["kept"][0]
    assert rungs["holding"] == {first: 0} and len(kept) == 1
    assert "[sevlm] resumed at step" not in said  # the kept trial was never paused
    assert "training on" not in said.replace("kept at step 4: training on", "")  # no timeout
    released = f"trial {first} dropped at step 4: reporting for Tune to stop it"
    assert (released in said) == (kept != [first]), said[-3000:]
    _, children = child_runs(uri, "slots")
    history = client_for(uri).get_metric_history
    for run in children:
        steps = [m.step for m in history(run.info.run_id, "val/lm_loss")]
        if run.info.run_name == f"slots-{kept[0]}":
            assert run.info.status == "FINISHED" and steps == [4, 8]
        else:
            assert run.info.status == "KILLED" and steps == [4]
            assert run.data.tags["sevlm.trial_state"] == "pruned at step 4"


def metric_steps(uri: str, runs: list, run_name: str) -> list[int]:
    """The steps at which a run logged its validation loss (each once, if resumed well)."""
    run_id = next(r.info.run_id for r in runs if r.info.run_name == run_name)
    return [m.step for m in client_for(uri).get_metric_history(run_id, "val/lm_loss")]


def test_training_spreads_over_two_nodes(sample, tmp_path):
    """A head and a second node on this machine (1 CPU each), one Ray Train worker per node
    (0.75 CPU each: two cannot share a node), checkpoints on storage both nodes see."""
    from ray.cluster_utils import Cluster

    from sevlm.artemis import DataSource, load_artemis
    from sevlm.config import load_configs
    from sevlm_train.driver import Scaling, run_training
    from sevlm_train.loop import TRACE_DIR

    temp = tempfile.mkdtemp(prefix="r2", dir="/tmp")
    # Cluster writes the head's address into Ray's default folder, whatever its temp_dir, and
    # fails if no Ray run on this machine has made that folder yet
    Path("/tmp/ray").mkdir(exist_ok=True)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "temp_dir": temp, "include_dashboard": False},
    )
    trace = tmp_path / "trace"
    trace.mkdir()
    os.environ[TRACE_DIR] = str(trace)
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        ray.data.DataContext.get_current().enable_progress_bars = False
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        source = DataSource.resolve(data=str(sample.out))
        model_cfg, train_cfg = load_configs("tiny", None, {**TRIAL, "max_steps": 6, "val_every": 3})
        outcome = run_training(
            source, model_cfg, train_cfg, output=tmp_path / "out", name="twonodes",
            scaling=Scaling(num_workers=2, cpus_per_worker=0.75, max_failures=0),
            storage=str(tmp_path / "shared"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
            data=load_artemis(source), printer=lambda _: None,
        )  # fmt: skip
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    finally:
        os.environ.pop(TRACE_DIR, None)
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert sorted(p.name for p in trace.glob("*.tsv")) == ["rank0.tsv", "rank1.tsv"]
    placed = {(trace / f"rank{r}.node").read_text() for r in (0, 1)}
    assert placed == nodes  # one worker on each node
    checkpoints = [p for p in (tmp_path / "shared" / "twonodes").glob("checkpoint_*") if p.is_dir()]
    assert checkpoints and all((c / "model.safetensors").is_file() for c in checkpoints)
    assert outcome.metrics["step"] in (3, 6) and "val/bleu4" in outcome.metrics
    steps = client_for(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(
        outcome.run_id, "val/emotion_accuracy"
    )
    assert sorted(m.step for m in steps) == [3, 6]
