"""The frozen encoder's feature cache: exact enough, keyed, atomic, computed once with Ray Data,
and what training reads instead of running the encoder."""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sevlm.artemis import ArtemisData, DataSource, load_artemis
from sevlm.config import ModelConfig
from sevlm.examples import ExampleConfig, iter_batches
from sevlm.feature_cache import (
    KEYS_FILE,
    META_FILE,
    FeatureCache,
    _fsync,
    cached_or_written,
    data_fingerprint,
    key_digest,
    load_cached,
    write_cache,
)
from sevlm.frozen_encoder import (
    cache_features_in_process,
    cache_key,
    encoder_features,
    encoder_name,
    training_encoder,
)
from sevlm.generate import Decoder
from sevlm.lexicon import read_lexicon
from sevlm.tokenizer import load_tokenizer
from sevlm.training import evaluate_shard, reduce_eval, to_device
from sevlm.weights import build_model

CPU = torch.device("cpu")
FROZEN = ModelConfig.preset("tiny", freeze_vision=True)


@pytest.fixture(scope="module")
def data(sample) -> tuple[DataSource, ArtemisData]:
    source = DataSource.resolve(data=str(sample.out))
    return source, load_artemis(source)


@pytest.fixture(scope="module")
def example(sample) -> ExampleConfig:
    return ExampleConfig.for_model(FROZEN, sample.lexicon)


@pytest.fixture(scope="module")
def encoder():
    return training_encoder(FROZEN, seed=0)


def images(paintings) -> dict[str, str]:
    return {p.key: str(p.image) for p in paintings}


def encode(encoder, paintings, example, batch_size=8):
    """(keys, fp32 features) batches computed directly, without a cache."""
    out = []
    with torch.no_grad():
        for batch in iter_batches(paintings, example, batch_size):
            pixels = torch.as_tensor(batch["pixel_values"])
            out.append((list(batch["key"]), encoder_features(encoder, pixels).numpy()))
    return out


@pytest.fixture(scope="module")
def val_cache(tmp_path_factory, data, example, encoder) -> FeatureCache:
    _, loaded = data
    val = loaded.split("val")
    key = cache_key(encoder, example, encoder_name(FROZEN), data_fingerprint(images(val)))
    root = tmp_path_factory.mktemp("features")
    batches = encode(encoder, val, example)
    write_cache(root, key, iter(batches), len(val))
    return FeatureCache.open(root, key)


def test_cached_features_equal_the_encoder_output(val_cache, data, example, encoder) -> None:
    _, loaded = data
    direct = encode(encoder, loaded.split("val"), example, batch_size=5)
    keys = [k for ks, _ in direct for k in ks]
    expected = np.concatenate([f for _, f in direct])
    got = val_cache.lookup(keys)
    assert got.dtype == np.float16 and got.shape == expected.shape == (len(keys), 64, 128)
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-3, atol=2e-3)
    assert isinstance(val_cache.features, np.memmap)  # read from disk, never loaded whole
    assert json.loads((val_cache.path / META_FILE).read_text())["shape"] == [len(keys), 64, 128]


def test_the_worker_model_has_the_cached_encoder(encoder) -> None:
    # the worker seeds, then builds the whole model: its encoder is the driver's, bit for bit
    torch.manual_seed(0)
    model = build_model(FROZEN, load_tokenizer())
    example = ExampleConfig.for_model(FROZEN)
    name = encoder_name(FROZEN)
    assert cache_key(model.image_encoder, example, name) == cache_key(encoder, example, name)


def test_cached_features_give_the_same_losses_and_validation(val_cache, data, example) -> None:
    source, loaded = data
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = build_model(FROZEN, tokenizer).eval()
    val = loaded.split("val")[:8]
    pixels = next(iter_batches(val, example, batch_size=8))
    cached = next(iter_batches(val, example, batch_size=8, features=val_cache))
    assert "pixel_values" not in cached and list(cached["key"]) == list(pixels["key"])
    with torch.no_grad():
        on_pixels = model(to_device(pixels, CPU))
        on_features = model(to_device(cached, CPU))
    for term in ("loss", "lm_loss", "vad_loss", "cl_loss"):
        a, b = getattr(on_pixels, term), getattr(on_features, term)
        assert float(b) == pytest.approx(float(a), rel=1e-3, abs=1e-4), term

    decoder = Decoder(model, tokenizer, read_lexicon(source.lexicon))
    args = dict(example_config=example, decoder=decoder, device=CPU, max_new_tokens=4)
    expected = reduce_eval([evaluate_shard(model, val, **args)], val)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although the features are cached")

    model.image_encoder.clip.forward = no_encoder
    got = reduce_eval([evaluate_shard(model, val, features=val_cache, **args)], val)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_a_changed_key_misses(val_cache, data, example, encoder, tmp_path, monkeypatch) -> None:
    _, loaded = data
    key = val_cache.key
    root = val_cache.path.parent
    assert FeatureCache.open(root, key) is not None
    name, fingerprint = encoder_name(FROZEN), key["data"]
    other_size = dataclasses.replace(example, image_size=32)
    grey = {"image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)}
    other_stats = training_encoder(dataclasses.replace(FROZEN, **grey), seed=0)
    other_weights = training_encoder(FROZEN, seed=1)
    pretrained = dataclasses.replace(FROZEN, vision_weights="/models/clip")
    misses = [
        cache_key(encoder, other_size, name, fingerprint),
        cache_key(other_stats, example, name, fingerprint),
        cache_key(other_weights, example, name, fingerprint),
        cache_key(encoder, example, encoder_name(pretrained), fingerprint),
    ]
    with monkeypatch.context() as patch:  # another way of resampling the images
        patch.setattr("sevlm.frozen_encoder.RESIZE", "bilinear, the whole image")
        misses.append(cache_key(encoder, example, name, fingerprint))
    for other in misses:
        assert key_digest(other) != key_digest(key)
        assert FeatureCache.open(root, other) is None

    # the images are part of the key: another file, or the same file changed, misses too
    val = images(loaded.split("val"))
    moved = tmp_path / "moved.jpg"
    first = next(iter(val))
    moved.write_bytes(Path(val[first]).read_bytes())
    assert data_fingerprint({**val, first: str(moved)}) != fingerprint
    stat = moved.stat()
    before = data_fingerprint({**val, first: str(moved)})
    os.utime(moved, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert data_fingerprint({**val, first: str(moved)}) != before


def test_half_written_caches_are_never_used(encoder, example, tmp_path) -> None:
    key = cache_key(encoder, example, "test", "data")
    features = np.ones((3, 4, 5), np.float32)
    batches = [(["a", "b", "c"], features)]
    path = write_cache(tmp_path, key, iter(batches), 3)
    assert FeatureCache.open(tmp_path, key) is not None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left

    # a leftover temporary folder (a writer killed before its rename) is never read, even
    # with every file in it
    leftover = tmp_path / f".{path.name}-killed"
    leftover.mkdir()
    for f in path.iterdir():
        (leftover / f.name).write_bytes(f.read_bytes())
    (path / META_FILE).unlink()  # and the real folder damaged: no meta.json, no cache
    assert FeatureCache.open(tmp_path, key) is None
    with pytest.raises(FileNotFoundError):
        FeatureCache.load(path)

    # writing again replaces the damaged folder
    path = write_cache(tmp_path, key, iter(batches), 3)
    np.testing.assert_array_equal(FeatureCache.open(tmp_path, key).lookup(["c"]), features[:1])

    # another key's meta in the folder (a digest collision) is not a hit
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "key": {**key, "data": "other"}}))
    assert FeatureCache.open(tmp_path, key) is None


def test_a_lost_race_keeps_the_winner(encoder, example, tmp_path) -> None:
    key = cache_key(encoder, example, "test", "data")
    first = write_cache(tmp_path, key, iter([(["a"], np.zeros((1, 2, 2)))]), 1)
    second = write_cache(tmp_path, key, iter([(["a"], np.ones((1, 2, 2)))]), 1)
    assert first == second and [p.name for p in tmp_path.iterdir()] == [first.name]
    np.testing.assert_array_equal(FeatureCache.open(tmp_path, key).lookup(["a"]), 0)


def test_a_damaged_cache_is_written_again_and_used(encoder, example, tmp_path) -> None:
    key = cache_key(encoder, example, "test", "data")

    def encoding(value: float):
        return lambda: (iter([(["a", "b"], np.full((2, 2, 2), value))]), lambda: {})

    path = cached_or_written(tmp_path, key, 2, encoding(1), print)
    assert load_cached(str(path)).lookup(["b"])[0, 0, 0] == 1
    # meta.json on disk, keys.json not (a crash): the folder does not load
    (path / KEYS_FILE).write_text("")
    lines: list[str] = []
    assert cached_or_written(tmp_path, key, 2, encoding(2), lines.append) == path
    assert any("is damaged" in line for line in lines)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing left aside
    assert FeatureCache.open(tmp_path, key).lookup(["b"])[0, 0, 0] == 2
    assert load_cached(str(path)).lookup(["b"])[0, 0, 0] == 2  # not the folder loaded before

    def no_encoding():
        raise AssertionError("encoded again")

    lines.clear()
    assert cached_or_written(tmp_path, key, 2, no_encoding, lines.append) == path
    assert lines == [f"feature cache hit: {path} (2 paintings)"]


def test_a_cache_that_fails_to_read_for_a_moment_is_kept(
    encoder, example, tmp_path, monkeypatch
) -> None:
    """A stale NFS handle is not damage: the complete cache others read stays, ours goes."""
    key = cache_key(encoder, example, "test", "data")
    path = write_cache(tmp_path, key, iter([(["a"], np.full((1, 2, 2), 1.0))]), 1)

    def stale(folder):
        raise OSError(errno.ESTALE, "Stale file handle")

    with monkeypatch.context() as patched:
        patched.setattr(FeatureCache, "load", staticmethod(stale))
        assert write_cache(tmp_path, key, iter([(["a"], np.full((1, 2, 2), 2.0))]), 1) == path
    assert FeatureCache.open(tmp_path, key).lookup(["a"])[0, 0, 0] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_folder_that_cannot_be_synced_is_not_an_error(tmp_path, monkeypatch) -> None:
    """Some network and FUSE file systems refuse to fsync a folder (EINVAL); files must sync."""

    def refuse(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    _fsync(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="Invalid argument"):
        _fsync(tmp_path / "f")


def test_lookup_of_an_unknown_painting_says_why(encoder, example, tmp_path) -> None:
    key = cache_key(encoder, example, "test", "data")
    batches = [(["a", "b"], np.zeros((2, 2, 2))), (["c"], np.ones((1, 2, 2)))]
    write_cache(tmp_path, key, iter(batches), 4, dropped={"unreadable_image": ["d"]})
    cache = FeatureCache.open(tmp_path, key)
    assert len(cache) == 3 and cache.features.shape == (3, 2, 2)  # 4 announced, 3 written
    assert cache.dropped == {"unreadable_image": ["d"]}
    np.testing.assert_array_equal(cache.lookup(["c", "a"])[:, 0, 0], [1, 0])
    with pytest.raises(KeyError, match=r"'zzz': never cached.*holds 3 paintings"):
        cache.lookup(["a", "zzz"])
    with pytest.raises(KeyError, match=r"'d': left out when caching \(unreadable_image\)"):
        cache.lookup(["d"])


# ---- through Ray ----


def with_broken_image(loaded: ArtemisData, folder: Path) -> tuple[ArtemisData, str]:
    """The data with one validation painting's image replaced by bytes that do not decode."""
    broken = copy.copy(loaded)
    paintings = list(loaded.paintings)
    i = next(i for i, p in enumerate(paintings) if p.split == "val")
    bad = folder / "broken.jpg"
    bad.write_bytes(b"not an image")
    paintings[i] = dataclasses.replace(paintings[i], image=bad)
    broken.paintings = paintings
    return broken, paintings[i].key


def test_cache_features_with_ray_data_then_a_hit(
    ray_local, data, example, encoder, tmp_path, monkeypatch
) -> None:
    from sevlm import feature_encoding, frozen_encoder, pipeline

    _, loaded = data
    broken, bad_key = with_broken_image(loaded, tmp_path)
    lines: list[str] = []
    root = tmp_path / "cache"
    path = feature_encoding.cache_features(
        broken, example, FROZEN, 0, root, batch_size=16, printer=lines.append
    )
    cache = FeatureCache.load(path)
    wanted = {p.key for s in ("train", "val") for p in broken.split(s)}
    assert set(cache.index) == wanted - {bad_key}
    assert cache.dropped == {"unreadable_image": [bad_key]}
    assert any("encoded" in line for line in lines)
    some = [p for p in broken.split("val") if p.key != bad_key][:6]
    (keys, direct), *_ = encode(encoder, some, example, batch_size=6)
    np.testing.assert_allclose(cache.lookup(keys).astype(np.float32), direct, atol=2e-3, rtol=1e-3)

    # a second call finds it: nothing is encoded again
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(feature_encoding, "_encoded", no_encoding)
    lines.clear()
    again = feature_encoding.cache_features(broken, example, FROZEN, 0, root, printer=lines.append)
    assert again == path and any("feature cache hit" in line for line in lines)
    assert [p.name for p in root.iterdir()] == [path.name]
    # the in-process builder keys the same features alike: it finds Ray's cache
    monkeypatch.setattr(frozen_encoder, "decode_batch", no_encoding)
    assert cache_features_in_process(broken, example, FROZEN, 0, root, printer=print) == path

    # the training pipeline reads the features; the painting left out is counted as such
    built = pipeline.build_pipeline(broken, example, epoch=0, splits=("val",), features=path)
    rows = built.datasets["val"].take_all()
    assert len(rows) == len(broken.split("val")) - 1 and "pixel_values" not in rows[0]
    by_key = {r["key"]: r["image_features"] for r in rows}
    np.testing.assert_array_equal(np.stack([by_key[k] for k in keys]), cache.lookup(keys))
    assert rows[0]["input_ids"].shape == (2, example.max_len)
    assert built.dropped() == {"unreadable_image": 1}


def test_cache_features_in_process_then_a_hit(data, example, encoder, tmp_path) -> None:
    _, loaded = data
    broken, bad_key = with_broken_image(loaded, tmp_path)
    lines: list[str] = []
    root = tmp_path / "cache"
    path = cache_features_in_process(
        broken, example, FROZEN, 0, root, splits=("val",), batch_size=4, printer=lines.append
    )
    cache = FeatureCache.load(path)
    assert set(cache.index) == {p.key for p in broken.split("val")} - {bad_key}
    assert cache.dropped == {"unreadable_image": [bad_key]}
    assert any("encoding" in line and "(val)" in line for line in lines)
    some = [p for p in broken.split("val") if p.key != bad_key][:6]
    (keys, direct), *_ = encode(encoder, some, example, batch_size=6)
    np.testing.assert_allclose(cache.lookup(keys).astype(np.float32), direct, atol=2e-3, rtol=1e-3)
    lines.clear()
    again = cache_features_in_process(broken, example, FROZEN, 0, root, splits=("val",),
                                      printer=lines.append)  # fmt: skip
    assert again == path and lines == [f"feature cache hit: {path} ({len(cache)} paintings)"]
    other = cache_features_in_process(broken, example, FROZEN, 1, root, splits=("val",),
                                      printer=lines.append)  # fmt: skip
    assert other != path  # another seed: other random encoder weights, another key


def test_a_worker_without_its_cache_stops_clearly(example, tmp_path) -> None:
    from sevlm_train.loop import open_feature_cache

    torch.manual_seed(0)
    model = build_model(FROZEN, load_tokenizer())
    assert open_feature_cache(model, FROZEN, example, None) is None
    with pytest.raises(RuntimeError, match="no feature cache for this worker's image encoder"):
        open_feature_cache(model, FROZEN, example, {"root": str(tmp_path), "data": "x"})


def test_training_with_a_frozen_encoder_reads_the_cache(ray_local, data, tmp_path) -> None:
    from sevlm.config import load_configs
    from sevlm_train.driver import Scaling, run_training

    source, loaded = data
    small = {
        "freeze_vision": True, "max_steps": 2, "batch_size": 4, "val_every": 2, "log_every": 1,
        "val_max_images": 4, "max_new_tokens": 4, "warmup_steps": 0,
    }  # fmt: skip
    model_cfg, train_cfg = load_configs("tiny", None, small)
    lines: list[str] = []
    outcome = run_training(
        source, model_cfg, train_cfg, output=tmp_path / "run", name="frozen",
        scaling=Scaling(num_workers=1, max_failures=0), storage=str(tmp_path / "storage"),
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", data=loaded, printer=lines.append,
    )  # fmt: skip
    assert outcome.metrics["step"] == 2 and outcome.metrics["val/images"] == 4
    caches = [p for p in (tmp_path / "storage" / "feature_cache").iterdir()]
    assert len(caches) == 1 and (caches[0] / META_FILE).is_file()
    assert any("feature cache written" in line for line in lines)
