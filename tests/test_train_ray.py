"""Training through Ray Train on a local 2-CPU Ray: sharding, checkpoints, failure, resume,
MLflow runs and the logged model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sevlm.artemis import ArtemisData, DataSource, load_artemis
from sevlm.config import load_configs
from sevlm.emotions import EMOTIONS
from sevlm.examples import ExampleConfig, painting_records
from sevlm.generate import Decoder
from sevlm.tracking import MetricLogger, client_for
from sevlm.training import eval_shard, evaluate_shard, reduce_eval
from sevlm.weights import load_pretrained

ray = pytest.importorskip("ray")
from sevlm.pipeline import TrainStream  # noqa: E402
from sevlm_train.driver import Scaling, run_training  # noqa: E402
from sevlm_train.loop import FAIL_AT_STEP, FAIL_MARKER, TRACE_DIR  # noqa: E402

SMALL = {
    "max_steps": 6, "batch_size": 4, "val_every": 2, "log_every": 1,
    "val_max_images": 6, "max_new_tokens": 6, "warmup_steps": 0,
}  # fmt: skip


@pytest.fixture(scope="module")
def data(sample):
    source = DataSource.resolve(data=str(sample.out))
    return source, load_artemis(source)


def train(
    tmp_path: Path, data, name: str, workers: int = 1, failures: int = 1, printer=None, **overrides
):
    source, loaded = data
    model_cfg, train_cfg = load_configs("tiny", None, {**SMALL, **overrides})
    return run_training(
        source,
        model_cfg,
        train_cfg,
        output=tmp_path / name,
        name=name,
        scaling=Scaling(num_workers=workers, max_failures=failures),
        storage=str(tmp_path / "storage"),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        data=loaded,
        printer=printer or (lambda _: None),
    )


def metric_steps(tmp_path: Path, run_id: str, key: str) -> list[int]:
    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def trained_batches(trace: Path) -> list[list[tuple[int, str]]]:
    """Each trained batch's rows as (epoch, painting key)."""
    lines = trace.read_text().splitlines() if trace.exists() else []
    return [[(int(e), k) for e, k in (t.split(":", 1) for t in ln.split("\t"))] for ln in lines]


def test_two_workers_disjoint_shards_and_exact_validation(sample, ray_local, tmp_path, monkeypatch):
    """Also: an image that stopped decoding after the data check, in worker 0's share of the
    first pass (6 steps of 32 from 210 paintings), leaves it 5 batches: both workers end the
    pass there, in step, and the run counts the image in its pipeline/* metrics."""
    monkeypatch.setenv(TRACE_DIR, str(tmp_path / "trace"))
    (tmp_path / "trace").mkdir()
    shutil.copytree(sample.out, tmp_path / "sample")
    source = DataSource.resolve(data=str(tmp_path / "sample"))
    loaded = load_artemis(source)  # checked before the image broke
    records = painting_records(loaded.split("train"))
    example = ExampleConfig(image_size=64, lexicon=str(source.lexicon))
    stream = TrainStream.create(loaded, example, per_worker=16, world=2, max_steps=6)
    first = stream.order(0)[0][0]
    Path(records["image"][first]).write_bytes(b"broken after the data check")
    outcome = train(tmp_path, (source, loaded), "two", workers=2, batch_size=32)
    rank0 = trained_batches(tmp_path / "trace" / "rank0.tsv")
    rank1 = trained_batches(tmp_path / "trace" / "rank1.tsv")
    assert len(rank0) == len(rank1) == 6  # each worker stepped 6 times, 16 images a step
    for batches in (rank0, rank1):
        assert [{e for e, _ in batch} for batch in batches] == [{0}] * 5 + [{1}]
    rows0 = [row for batch in rank0 for row in batch]
    rows1 = [row for batch in rank1 for row in batch]
    for epoch in (0, 1):
        keys0 = {k for e, k in rows0 if e == epoch}
        keys1 = {k for e, k in rows1 if e == epoch}
        assert keys0 and keys1 and not keys0 & keys1
    history = client_for(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history
    assert [m.value for m in history(outcome.run_id, "pipeline/unreadable_image")] == [1.0]
    checkpoints = sorted(
        p for p in (tmp_path / "storage" / "two").glob("checkpoint_*") if p.is_dir()
    )
    assert 1 <= len(checkpoints) <= 3  # the best kept (keep 2) plus the latest
    assert {"model.safetensors", "trainer.pt"} <= {p.name for p in checkpoints[-1].iterdir()}
    # the last (step 6, a batch into pass 1) holds where each worker reads on, and its RNGs
    saved = torch.load(checkpoints[-1] / "trainer.pt", weights_only=True)
    assert (saved["state"]["step"], saved["state"]["stream_pass"]) == (6, 1)
    index = stream.order(1)[0]
    for rank in (0, 1):
        share = np.arange(stream.share_rows * 2).reshape(-1, 2, 16)[:, rank].ravel()
        readable = [row for row, at in enumerate(share) if index[at] != first]
        assert saved["state"]["next_rows"][rank] == readable[15] + 1  # after 16 trained
    python_rngs = [rng["python"] for rng in saved["rng"]]
    assert len(python_rngs) == 2 and python_rngs[0] != python_rngs[1]  # each worker's own
    assert saved["dropped"] == {"unreadable_image": [records["key"][first]]}
    assert outcome.metrics["step"] in (2, 4, 6)
    assert metric_steps(tmp_path, outcome.run_id, "val/bleu4") == [2, 4, 6]

    # the reported figures are those of a one-process evaluation of the same model
    model = load_pretrained(outcome.model_dir)
    val = loaded.split("val")
    example = ExampleConfig(image_size=64, lexicon=str(source.lexicon))
    part = evaluate_shard(
        model.model, eval_shard(val, 0, 1, 6), example,
        Decoder(model.model, model.tokenizer, model.lexicon), torch.device("cpu"),
        batch_size=3, max_new_tokens=6,
    )  # fmt: skip
    again = reduce_eval([part], val)
    for key in ("val/loss", "val/emotion_accuracy", "val/bleu4", "val/bleu1", "val/images"):
        assert again[key] == pytest.approx(outcome.metrics[key], rel=1e-4, abs=1e-6), key

    # the logged model loads in a fresh process and explains an image
    image = next(p.image for p in val)
    script = f"""
import json, mlflow, pandas as pd
from sevlm.mlflow_model import encode_image
mlflow.set_tracking_uri({f"sqlite:///{tmp_path}/mlflow.db"!r})
model = mlflow.pyfunc.load_model({outcome.model_uri!r})
image = encode_image({str(image)!r})
out = model.predict(pd.DataFrame({{"image": [image, image]}}))
print(json.dumps(out.to_dict(orient="records")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True,
    )  # fmt: skip
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 2 and rows[0] == rows[1]
    assert rows[0]["emotion"] in (*EMOTIONS, "unknown") and isinstance(rows[0]["explanation"], str)


def test_a_killed_worker_resumes_without_gaps_or_duplicates(ray_local, data, tmp_path, monkeypatch):
    # Checkpoint at step 2, step 3 logged, failure at step 4: the restart replays step 3.
    monkeypatch.setenv(FAIL_AT_STEP, "4")
    monkeypatch.setenv(FAIL_MARKER, str(tmp_path / "fault-marker"))
    outcome = train(tmp_path, data, "fault", failures=1)
    assert (tmp_path / "fault-marker").read_text().startswith("failed at step 4")
    assert outcome.metrics["step"] in (2, 4, 6)
    assert metric_steps(tmp_path, outcome.run_id, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert metric_steps(tmp_path, outcome.run_id, "val/bleu4") == [2, 4, 6]
    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sevlm").experiment_id])
    assert [r.info.run_id for r in runs] == [outcome.run_id]
    assert runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["train.max_steps"] == "6" and params["model.name"] == "tiny"
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert "data_report.json" in artifacts


def test_early_stop_after_validations_without_improvement(ray_local, data, tmp_path, monkeypatch):
    """Also: the workers validate on the driver's validation paintings (here three of them),
    not on a split of their own reading of the files; and best/* metrics that MLflow does not
    take at the end are reported, not lost in silence."""
    monkeypatch.setenv(TRACE_DIR, str(tmp_path / "trace"))
    (tmp_path / "trace").mkdir()
    source, loaded = data
    val = loaded.split("val")
    assert len(val) > 3
    kept = ArtemisData([p for p in loaded.paintings if p not in val[3:]], loaded.report)
    # learning rates too small to move a weight: the validation loss never changes, so the
    # second validation (step 4) is the first not to improve
    tiny_lr = {"lr": 1e-30, "lr_vad": 1e-30}

    class Unanswered(MetricLogger):  # the driver's logger (the workers' are their own)
        def log(self, metrics, step):
            self.dropped += len(metrics)

    monkeypatch.setattr("sevlm_train.driver.MetricLogger", Unanswered)
    lines: list[str] = []
    outcome = train(
        tmp_path, (source, kept), "early", early_stop=1, printer=lines.append, **tiny_lr
    )
    assert any("MLflow did not take" in line for line in lines)  # best/*: not a silent loss
    assert len(trained_batches(tmp_path / "trace" / "rank0.tsv")) == 4
    assert metric_steps(tmp_path, outcome.run_id, "val/lm_loss") == [2, 4]
    history = client_for(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history
    assert [m.value for m in history(outcome.run_id, "val/images")] == [3.0, 3.0]


def test_interrupted_and_finished_runs_continue(ray_local, sample, tmp_path, monkeypatch):
    """A pass of one epoch (as on ArtEmis): 210 training paintings make 6 steps of 32, but one
    image stopped decoding after the data check, early in both epochs' orders, so each pass
    gives 5 batches, the later ones shifted by a row. The run stops in the second pass, at
    step 9, and resumes from its step-8 checkpoint: it must read on from the row after the
    last it trained, not from its third batch as laid out before the drop."""
    monkeypatch.setattr("sevlm.pipeline.PASS_ROWS", 1)
    shutil.copytree(sample.out, tmp_path / "sample")
    source = DataSource.resolve(data=str(tmp_path / "sample"))
    loaded = load_artemis(source)  # checked before the image broke
    stream = TrainStream.create(loaded, ExampleConfig(), per_worker=32, max_steps=10)
    epoch_0, epoch_1 = stream.order(0)[0], stream.order(1)[0]
    broken = next(i for i in epoch_1[:96] if i in epoch_0[:192])  # before the resume point
    records = painting_records(loaded.split("train"))
    Path(records["image"][broken]).write_bytes(b"broken after the data check")
    data = (source, loaded)
    steps = {"batch_size": 32, "max_steps": 10}
    monkeypatch.setenv(FAIL_AT_STEP, "9")
    monkeypatch.setenv(FAIL_MARKER, str(tmp_path / "fault-marker"))
    monkeypatch.setenv(TRACE_DIR, str(tmp_path / "trace"))
    (tmp_path / "trace").mkdir()
    with pytest.raises(Exception, match="injected fault"):
        train(tmp_path, data, "resume", failures=0, **steps)  # no restarts allowed: it stops
    trace = tmp_path / "trace" / "rank0.tsv"
    assert len(trained_batches(trace)) == 8  # steps 1-8 trained, 9 failed before stepping
    outcome = train(tmp_path, data, "resume", failures=0, **steps)  # the same command, again
    assert len(trained_batches(trace)) == 10  # resumed at step 9, not from scratch
    # the very batches, in the same order, that a run without the failure trains
    monkeypatch.delenv(FAIL_AT_STEP)
    monkeypatch.setenv(TRACE_DIR, str(tmp_path / "straight"))
    (tmp_path / "straight").mkdir()
    train(tmp_path, data, "straight", failures=0, **steps)
    batches = trained_batches(trace)
    assert batches == trained_batches(tmp_path / "straight" / "rank0.tsv")
    epochs = [{e for e, _ in batch} for batch in batches]
    assert epochs == [{0}] * 5 + [{1}] * 5  # an epoch a pass, each a batch short
    first, second = ([k for batch in batches[5 * e : 5 * e + 5] for _, k in batch] for e in (0, 1))
    assert len(set(first)) == len(set(second)) == 160  # no row twice in an epoch
    assert records["key"][broken] not in first + second
    assert first != second  # each epoch its own order
    assert metric_steps(tmp_path, outcome.run_id, "train/loss") == list(range(1, 11))
    history = client_for(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history
    assert [m.value for m in history(outcome.run_id, "pipeline/unreadable_image")] == [1.0]
    again = train(tmp_path, data, "resume", failures=0, **steps)  # a finished run: nothing to redo
    assert len(trained_batches(trace)) == 10
    assert again.run_id == outcome.run_id
    best = metric_steps(tmp_path, outcome.run_id, "best/val/lm_loss")
    assert best == [outcome.metrics["step"]]  # logged once, at the best checkpoint's step
    assert load_pretrained(again.model_dir).info["metrics"]["step"] == outcome.metrics["step"]


def test_a_worker_resumes_from_its_own_row_else_from_the_steps_trained():
    """Each worker's row when the checkpoint has one per worker; a checkpoint from before rows
    were kept (no ``next_rows``), or of another number of workers, gives the step's place."""
    from sevlm_train.loop import TrainState, _resume_row

    saved = {"step": 11, "epoch": 1, "stream_pass": 1, "batch_in_pass": 3, "best": 1.5}
    state = TrainState(**saved)  # the state an older checkpoint holds
    assert [_resume_row(state, rank, 2, 16) for rank in (0, 1)] == [48, 48]
    state.next_rows = [49, 48]  # worker 0 lost a row to an unreadable image
    assert [_resume_row(state, rank, 2, 16) for rank in (0, 1)] == [49, 48]
    assert _resume_row(state, 0, 1, 32) == 96  # resumed with one worker instead of two


def test_one_node_runs_get_the_quick_train_settings_only_while_they_start(monkeypatch):
    from sevlm_train.driver import train_env

    watcher, interval = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(watcher, raising=False)
    monkeypatch.setenv(interval, "3")  # the user's own setting wins
    with train_env(one_node=True):
        assert os.environ[watcher] == "0" and os.environ[interval] == "3"
    assert watcher not in os.environ and os.environ[interval] == "3"
    with train_env(one_node=False):  # a cluster of several nodes keeps Ray's defaults
        assert watcher not in os.environ
    with pytest.raises(RuntimeError), train_env(one_node=True):
        raise RuntimeError("a failed fit")
    assert watcher not in os.environ


def test_a_split_smaller_than_a_step_fails_before_the_run_opens(ray_local, data, tmp_path):
    with pytest.raises(ValueError, match="210 paintings with text, fewer than a step's 256"):
        train(tmp_path, data, "big", batch_size=256)
    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("sevlm")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


@ray.remote(num_cpus=0.1)
def _read_a_dataset() -> int:
    rows = ray.data.range(8, override_num_blocks=2).map_batches(lambda batch: batch).take_all()
    return len(rows)


def test_ray_datas_stats_actor_outlives_a_worker_groups_placement_group(ray_local):
    """Ray Data's stats actor, created in a Train worker, died with its placement group at a
    trial's end; the datasets still running then ended with a KeyError traceback from it."""
    import time

    from ray.data._internal.stats import STATS_ACTOR_NAME, STATS_ACTOR_NAMESPACE
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from sevlm_train.driver import ensure_ray

    def stats_actor():
        try:
            return ray.get_actor(STATS_ACTOR_NAME, namespace=STATS_ACTOR_NAMESPACE)
        except ValueError:
            return None

    if (earlier := stats_actor()) is not None:  # made by this module's earlier tests
        ray.kill(earlier)
        deadline = time.monotonic() + 30
        while stats_actor() is not None:
            assert time.monotonic() < deadline, "the earlier stats actor did not die"
            time.sleep(0.1)
    ensure_ray(lambda _: None)
    started = stats_actor()
    group = placement_group([{"CPU": 0.5}])
    ray.get(group.ready())
    inside = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    assert ray.get(_read_a_dataset.options(scheduling_strategy=inside).remote()) == 8
    remove_placement_group(group)
    time.sleep(2)  # without the driver's actor, the group's own one is dead by then
    assert started is not None and ray.get(started.get_datasets.remote(), timeout=30)
