"""The Ray Data pipeline gives what the plain transforms give, and counts what it drops."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sevlm.artemis import DataSource, load_artemis
from sevlm.examples import ExampleConfig, iter_batches

CONFIG = ExampleConfig(image_size=32, max_len=30)


def _collect(dataset) -> dict[str, np.ndarray]:
    rows = sorted(dataset.take_all(), key=lambda r: r["key"])
    return {k: np.stack([r[k] for r in rows]) for k in ("input_ids", "pixel_values", "has_pair")}


def test_pipeline_matches_plain_transforms(ray_local, sample) -> None:
    from sevlm.pipeline import build_pipeline

    source = DataSource.resolve(data=str(sample.out))
    data = load_artemis(source)
    config = ExampleConfig(image_size=32, lexicon=str(sample.lexicon))
    pipeline = build_pipeline(data, config, epoch=2, splits=("val", "test"), batch_size=8)
    got = _collect(pipeline.datasets["val"])
    plain = [b for b in iter_batches(data.split("val"), config, batch_size=5, epoch=2)]
    order = np.argsort(np.concatenate([b["key"] for b in plain]))
    for name in ("input_ids", "pixel_values", "has_pair"):
        expected = np.concatenate([b[name] for b in plain])[order]
        np.testing.assert_array_equal(got[name], expected)
    assert got["pixel_values"].shape[1:] == (3, 32, 32)
    assert got["input_ids"].shape[1:] == (2, 30)
    assert pipeline.datasets["test"].count() == len(data.split("test"))
    assert pipeline.dropped() == {}


def test_unreadable_images_are_dropped_and_counted_once(ray_local, sample, tmp_path: Path) -> None:
    from sevlm.pipeline import build_pipeline

    copy = tmp_path / "sample"
    shutil.copytree(sample.out, copy)
    data = load_artemis(DataSource.resolve(data=str(copy)))  # found on disk, not decoded
    val = data.split("val")
    for painting in val[:3]:
        painting.image.write_bytes(b"corrupted after the check")
    val[3].image.unlink()
    pipeline = build_pipeline(data, CONFIG, splits=("val",), batch_size=4)
    assert pipeline.datasets["val"].count() == len(val) - 4
    expected = {"missing_image": 1, "unreadable_image": 3}
    assert pipeline.dropped() == expected
    assert len(pipeline.datasets["val"].take_all()) == len(val) - 4  # a second epoch's read
    assert pipeline.dropped() == expected  # the same paintings, counted once


def test_threaded_decoding_gives_the_same_rows_and_drops(sample, tmp_path: Path) -> None:
    from sevlm.examples import decode_batch, painting_records

    copy = tmp_path / "sample"
    shutil.copytree(sample.out, copy)
    paintings = load_artemis(DataSource.resolve(data=str(copy))).split("val")[:9]
    paintings[1].image.write_bytes(b"corrupted after the check")
    paintings[6].image.unlink()
    batch = painting_records(paintings)
    serial, serial_dropped = decode_batch(batch, CONFIG)
    threaded, threaded_dropped = decode_batch(batch, CONFIG, threads=4)
    expected = {"unreadable_image": [batch["key"][1]], "missing_image": [batch["key"][6]]}
    assert threaded_dropped == serial_dropped == expected
    assert list(threaded["key"]) == [k for i, k in enumerate(batch["key"]) if i not in (1, 6)]
    assert list(threaded["key"]) == list(serial["key"])
    np.testing.assert_array_equal(threaded["pixel_values"], serial["pixel_values"])
    assert threaded["pixel_values"].shape == (7, 3, 32, 32)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        decode_batch(batch, CONFIG, threads=0)


def test_relative_inputs_become_absolute_paths(sample, monkeypatch) -> None:
    from sevlm.examples import painting_records

    monkeypatch.chdir(sample.out.parent)
    source = DataSource.resolve(data=sample.out.name)
    assert source.csv.is_absolute() and source.images.is_absolute()
    assert source.lexicon.is_absolute()
    records = painting_records(load_artemis(source).paintings)
    assert all(Path(image).is_absolute() for image in records["image"])
    config = ExampleConfig(lexicon=f"{sample.out.name}/NRC-VAD-Lexicon.txt")
    assert Path(config.lexicon).is_absolute() and Path(config.lexicon).is_file()


def test_block_count_spreads_decoding_over_the_tasks() -> None:
    from sevlm.pipeline import block_count

    # a sample-size split: at least four blocks per task, none smaller than a batch
    assert block_count(170, 16, 2) == 8
    assert block_count(20, 16, 2) == 2 and block_count(5, 16, 8) == 1
    # ArtEmis-size: about sixteen batches a block
    assert block_count(68_000, 32, 2) == 133


def test_epochs_per_pass_covers_the_run_up_to_a_pass_size() -> None:
    from sevlm.pipeline import PASS_ROWS, epochs_per_pass

    assert epochs_per_pass(200, 16, 120) == 10  # the sample: the whole run in one pass
    assert epochs_per_pass(200, 16, 10_000) == PASS_ROWS // 200  # capped at a pass's rows
    assert epochs_per_pass(68_000, 32, 100_000) == 1  # ArtEmis: an epoch a pass
    assert epochs_per_pass(0, 16, 10) == 1


def _stream(data, config, **kw):
    from sevlm.pipeline import TrainStream

    return TrainStream.create(data, config, **{"per_worker": 8, "max_steps": 60, **kw})


def test_a_pass_is_epochs_each_in_its_own_seeded_order(ray_local, sample) -> None:
    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    config = ExampleConfig(image_size=32, lexicon=str(sample.lexicon))
    stream = _stream(data, config)  # 60 steps of 8 from 210 paintings: 3 epochs, one pass
    assert (stream.rows, stream.epochs_per_pass, stream.steps_per_pass) == (210, 3, 78)
    index, epochs = stream.order(0)
    assert list(epochs) == [0] * 210 + [1] * 210 + [2] * 210
    orders = [list(index[210 * e : 210 * (e + 1)]) for e in range(3)]
    orders.append(list(stream.order(1)[0][:210]))  # the next pass: epoch 3
    assert list(stream.order(1)[1][:1]) == [3]
    for order in orders:
        assert sorted(order) == list(range(210)) and order != sorted(order)
    assert len({tuple(order) for order in orders}) == 4  # every epoch its own order
    assert list(_stream(data, config).order(0)[0]) == list(index)  # seeded: the same again
    other = _stream(data, ExampleConfig(image_size=32, lexicon=str(sample.lexicon), seed=1))
    assert list(other.order(0)[0]) != list(index)


def test_workers_read_disjoint_equal_shares_in_order_from_any_row(ray_local, sample) -> None:
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    from sevlm.examples import painting_records

    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    config = ExampleConfig(image_size=32, lexicon=str(sample.lexicon))
    stream = _stream(data, config, per_worker=4, world=2)
    keys = np.array(painting_records(data.split("train"))["key"])
    index, epochs = stream.order(1)
    shares = []
    for rank in (0, 1):
        with warnings.catch_warnings():  # the stage's options are of this Ray, none deprecated
            warnings.simplefilter("error", RayDeprecationWarning)
            dataset = stream.shard(1, rank)
        assert dataset.context.execution_options.preserve_order
        assert dataset.materialize().num_blocks() > 2  # several tasks, finishing in any order
        rows = list(dataset.iter_rows())
        assert len(rows) == 78 * 4
        steps = np.arange(78 * 8).reshape(78, 2, 4)[:, rank].ravel()  # its half of each step
        assert [str(r["key"]) for r in rows] == list(keys[index[steps]])
        assert [int(r["epoch"]) for r in rows] == list(epochs[steps])  # epochs 3 to 5
        assert [int(r["share_row"]) for r in rows] == list(range(78 * 4))
        shares.append(rows)
        later = list(stream.shard(1, rank, start=281).iter_rows())  # a resumed read: the rest
        assert [(str(r["key"]), r["share_row"]) for r in later] == [
            (str(r["key"]), r["share_row"]) for r in rows[281:]
        ]
        assert list(stream.shard(1, rank, start=312).iter_batches()) == []  # resumed at the end
    for epoch in (3, 4, 5):
        halves = [{str(r["key"]) for r in rows if r["epoch"] == epoch} for rows in shares]
        assert not halves[0] & halves[1]
    assert shares[0][0]["pixel_values"].shape == (3, 32, 32)
    assert stream.dropped() == {}
    with pytest.raises(ValueError, match="rank 2 is not one of 2 workers"):
        stream.shard(0, 2)
    with pytest.raises(ValueError, match="row 313 is outside a share of 312 rows"):
        stream.shard(0, 1, start=313)


def test_rows_of_a_pass_pair_as_their_own_epoch(ray_local, sample) -> None:
    from sevlm.examples import encode_batch

    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    config = ExampleConfig(image_size=32, lexicon=str(sample.lexicon))
    rows = _stream(data, config).shard(0, 0).take(6)
    batch = {k: [r[k] for r in rows] for k in ("key", "annotations")}
    epochs = [0, 1, 2, 0, 1, 2]
    mixed = encode_batch(batch, config, epochs)
    for i, e in enumerate(epochs):
        one = encode_batch({k: v[i : i + 1] for k, v in batch.items()}, config, e)
        np.testing.assert_array_equal(mixed["input_ids"][i], one["input_ids"][0])


def test_stages_run_where_ray_train_leaves_ray_data_no_whole_cpu(ray_local, sample) -> None:
    """A search on a small machine: Ray Train's worker groups hold the CPUs in Ray Data's
    autoscaling coordinator, which leaves each running dataset a budget of 0 CPUs. Tasks that
    needed CPU then starved (one at a time, "the job may hang forever" after 60 s, a spinning
    scheduling loop); the pipeline's stages declare none, so they are never starved."""
    import logging

    from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
    from ray.data._internal.execution import resource_manager

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(resource_manager.__name__)
    delay = resource_manager.STARVATION_WARNING_DELAY_S
    coordinator = get_or_create_autoscaling_coordinator()
    ray_local.get(  # what a Ray Train worker group registers (train-<run id>, high priority)
        coordinator.request_resources.remote(
            requester_id="test-train", resources=[{"CPU": 2.0}], expire_after_s=120
        )
    )
    resource_manager.STARVATION_WARNING_DELAY_S = 0.0  # warn at once, not after 60 s
    logger.addHandler(handler)
    try:
        data = load_artemis(DataSource.resolve(data=str(sample.out)))
        stream = _stream(data, CONFIG, max_steps=100)  # 800 rows: 4 epochs a pass
        rows = stream.shard(0, 0).take_all()
    finally:
        logger.removeHandler(handler)
        resource_manager.STARVATION_WARNING_DELAY_S = delay
        ray_local.get(coordinator.cancel_request.remote(requester_id="test-train"))
    assert len(rows) == 8 * stream.steps_per_pass == 840
    assert not [w for w in warnings if "not enough to run" in w], warnings


def test_stage_tasks_at_once_must_be_positive(sample) -> None:
    from sevlm.pipeline import build_pipeline

    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    with pytest.raises(ValueError, match="tasks must be at least 1"):
        build_pipeline(data, CONFIG, splits=("val",), tasks=0)


def run_python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_stage_modules_stay_light_and_the_in_process_cache_needs_no_ray():
    """Ray runs the pipeline's stages in fresh processes that import what the stages use:
    torch or transformers there cost seconds per process (bench/RESULTS.md). The in-process
    feature cache runs on machines without Ray (bench/train_step.py on a GPU machine)."""
    heavy = run_python(
        "import sys, sevlm.pipeline; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))"
    )
    assert heavy == "[]"
    no_ray = "import sys; sys.modules['ray'] = None; import sevlm.frozen_encoder, sevlm.training"
    run_python(no_ray)  # sys.modules["ray"] = None: any import of ray raises
