"""The Ray Data pipeline: dataset splits -> Ray Datasets of model inputs.

Painting records go to Ray Data through ``ray.data.from_huggingface``; decoding and tokenizing
are ``map_batches`` stages with fractional CPUs, so they share a small machine with training
workers. Images that fail to decode are dropped and counted by a zero-CPU actor.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import ray

from sevlm.artemis import SPLITS, ArtemisData
from sevlm.examples import ExampleConfig, decode_batch, encode_batch, painting_records


@ray.remote(num_cpus=0)
class DropCounter:
    """The paintings the pipeline drops, by reason, across every task on every node.

    Keys, not counts: a dataset read once per epoch, or a retried task, meets the same bad
    image again, and it must count once.
    """

    def __init__(self) -> None:
        self.keys: dict[str, set[str]] = {}

    def add(self, reason: str, keys: list[str]) -> None:
        self.keys.setdefault(reason, set()).update(keys)

    def get(self) -> dict[str, int]:
        return {reason: len(keys) for reason, keys in sorted(self.keys.items())}

    def get_keys(self) -> dict[str, list[str]]:
        return {reason: sorted(keys) for reason, keys in sorted(self.keys.items())}


@dataclass
class Pipeline:
    """Ray Datasets per split, and the counter of what their decoding dropped."""

    datasets: dict[str, ray.data.Dataset]
    counter: ray.actor.ActorHandle

    def dropped(self) -> dict[str, int]:
        """Paintings dropped so far, by reason (known once the datasets have been read)."""
        return ray.get(self.counter.get.remote())


def build_pipeline(
    data: ArtemisData,
    config: ExampleConfig,
    *,
    epoch: int | None = 0,
    splits: tuple[str, ...] = SPLITS,
    batch_size: int = 32,
    num_cpus: float = 0.25,
) -> Pipeline:
    """Lazy Ray Datasets of model inputs for ``splits``, pairings drawn for ``epoch``.

    With ``epoch=None`` the datasets stop after decoding: rows keep their ``annotations`` and
    the consumer draws each epoch's pairs itself (:func:`sevlm.examples.encode_batch`), as the
    trainer does, since one dataset serves every epoch.
    """
    counter = DropCounter.remote()

    def decode(batch: dict) -> dict:
        out, dropped = decode_batch(batch, config)
        for reason, keys in dropped.items():
            ray.get(counter.add.remote(reason, keys))
        return out

    def encode(batch: dict) -> dict:
        return encode_batch(batch, config, epoch)

    result = {}
    for split in splits:
        table = datasets.Dataset.from_dict(painting_records(data.split(split)))
        ds = ray.data.from_huggingface(table)
        opts = {"batch_size": batch_size, "batch_format": "numpy", "num_cpus": num_cpus}
        if epoch is not None:
            ds = ds.map_batches(encode, **opts)
        result[split] = ds.map_batches(decode, **opts)
    return Pipeline(result, counter)
