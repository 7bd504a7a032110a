"""The frozen image encoder run over the images with Ray Data, into a feature cache: decode
tasks with fractional CPUs, then the encoder in an actor pool (one actor per GPU, else one).

:func:`sevlm.frozen_encoder.cache_features_in_process` does the same without Ray: the same
key, hence the same folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from sevlm.artemis import ArtemisData
from sevlm.config import ModelConfig
from sevlm.examples import ExampleConfig, decode_batch, painting_records
from sevlm.feature_cache import cached_or_written
from sevlm.frozen_encoder import frozen_features, planned_cache
from sevlm.model import ImageEncoder
from sevlm.pipeline import DECODE_THREADS, DropCounter, records_dataset, report_drops


class EncoderActor:
    """Ray Data actor: pixels -> fp16 encoder features (before the projection), keyed.

    The encoder comes from the model config and the driver's weights, passed through the
    object store (``state``: a one-element list holding the reference), so every actor runs
    the very weights the cache key was computed from, and none fetches from a model hub.
    """

    def __init__(self, model: dict[str, Any], state: list[ray.ObjectRef]) -> None:
        config = ModelConfig.from_dict(model).without_pretrained()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder = ImageEncoder(config)
        self.encoder.clip.load_state_dict(ray.get(state[0]))
        self.encoder.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = frozen_features(self.encoder, batch["pixel_values"], self.device)
        return {"key": batch["key"], "features": features}


def cache_features(
    data: ArtemisData,
    example: ExampleConfig,
    model_cfg: ModelConfig,
    seed: int,
    root: Path | str,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    batch_size: int = 32,
    num_cpus: float = 0.25,
    printer: Callable[[str], None] = print,
) -> Path:
    """The feature cache folder of ``splits`` for the encoder a training worker builds with
    ``model_cfg`` and ``seed``; computed with Ray Data unless it is there already.

    Images are decoded by fractional-CPU tasks, :data:`DECODE_THREADS` threads each (failures
    dropped, counted and recorded in the cache), and encoded by an actor pool: one actor per
    GPU of the cluster, else one.
    """
    records = painting_records([p for s in splits for p in data.split(s)])
    encoder, key = planned_cache(records, example, model_cfg, seed)

    def encode():
        counter = DropCounter.remote()
        batches = _encoded(records, example, model_cfg, encoder, counter, batch_size, num_cpus)
        return batches, lambda: ray.get(counter.get_keys.remote())

    what = f"paintings ({', '.join(splits)})"
    return cached_or_written(root, key, len(records["key"]), encode, printer, what)


def _encoded(
    records: dict[str, list],
    example: ExampleConfig,
    model_cfg: ModelConfig,
    encoder: ImageEncoder,
    counter: ray.actor.ActorHandle,
    batch_size: int,
    num_cpus: float,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream ``(keys, features)`` batches: decode tasks, then the encoder's actor pool."""

    def decode(batch: dict) -> dict:
        out, dropped = decode_batch(batch, example, DECODE_THREADS)
        report_drops(counter, dropped)
        return {"key": out["key"], "pixel_values": out["pixel_values"]}

    gpus = int(ray.cluster_resources().get("GPU", 0))
    state = ray.put({k: v.detach().cpu() for k, v in encoder.clip.state_dict().items()})
    tasks = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = records_dataset(records, batch_size, tasks)
    ds = ds.map_batches(
        decode,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=tasks),
    ).map_batches(
        EncoderActor,
        fn_constructor_kwargs={"model": model_cfg.to_dict(), "state": [state]},
        compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
        num_gpus=1 if gpus else 0,
        num_cpus=1.0 if gpus else 0.5,
        batch_size=batch_size,
        batch_format="numpy",
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield [str(k) for k in batch["key"]], batch["features"]
