"""The Ray Data pipeline: dataset splits -> Ray Datasets of model inputs.

Painting records go to Ray Data as Arrow blocks (:func:`records_dataset`); decoding and
tokenizing are ``map_batches`` stages whose tasks declare no CPU and are capped in number (see
:func:`build_pipeline`), so they share a small machine with training workers. Images that fail
to decode are dropped and counted by a zero-CPU actor.

With a frozen encoder, :func:`sevlm.feature_encoding.cache_features` runs it once over the
images into a :mod:`sevlm.feature_cache`, and ``build_pipeline(..., features=folder)`` reads
features from it instead of decoding pixels.

Ray Data runs this module's stages, and the drop counter, in fresh worker processes, which
import what the stages reference: this module and what it imports stay free of torch and
transformers (about 4 s of imports per process on 2 CPUs; bench/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray
from ray.data import RandomSeedConfig

from sevlm.artemis import SPLITS, ArtemisData
from sevlm.examples import (
    ExampleConfig,
    decode_batch,
    encode_batch,
    epoch_records,
    painting_records,
)
from sevlm.feature_cache import attach_features, load_cached


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


DECODE_THREADS = 2
"""Threads that decode the images of a batch in each decode task (Pillow releases the GIL while
it decodes). Ray Data notices that a task has ended only at its next poll (0.1 s timeout;
bench/RESULTS.md measured hand-overs of 0.13 to 0.21 s) and runs one task alone for the first
second of a read: meanwhile a lone task's second thread keeps the other CPU busy."""


SHUFFLE_CPUS = 0.25
"""CPUs each task of the records' shuffle declares (unlike the map stages, see
:func:`build_pipeline`): Ray Data starts a shuffle's tasks together (bench/RESULTS.md saw more
at once than the decode stage's), and their CPUs are what keeps them from crowding the node."""


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
    num_cpus: float = 0.0,
    features: Path | str | None = None,
    epochs_per_pass: int = 1,
    decode_threads: int = DECODE_THREADS,
    tasks: int | None = None,
) -> Pipeline:
    """Lazy Ray Datasets of model inputs for ``splits``, pairings drawn for ``epoch``.

    With ``epoch=None`` the datasets stop after decoding: rows keep their ``annotations`` and
    the consumer draws each epoch's pairs itself (:func:`sevlm.examples.encode_batch`), as the
    trainer does, since one dataset serves every epoch. Each read is then one training pass
    of ``epochs_per_pass`` epochs, never in the records' sorted (style/painting) order:

    - ``epochs_per_pass`` > 1: one read streams that many epochs, each in its own seeded
      random order, rows tagged with their ``epoch`` in the pass
      (:func:`sevlm.examples.epoch_records`). Ray Data plans and starts a read anew each
      time, about a second each on a small machine, and a pass pays it once for all its
      epochs (see :func:`epochs_per_pass`). Every pass repeats the same orders.
    - ``epochs_per_pass`` == 1 (a large split): Ray Data shuffles the records before
      decoding, seeded and anew for every read, so every epoch has its own order.

    Each decode task decodes a batch with ``decode_threads`` threads (see
    :data:`DECODE_THREADS`). At most ``tasks`` tasks of a stage run at once (default: the
    cluster's CPUs; a run sharing the cluster passes its share, and its blocks stay cut for
    the whole cluster, so its batches do not depend on its share), each declaring ``num_cpus``
    to Ray: none by default, since Ray Data 2.60 budgets a dataset's CPUs by what Ray Train
    leaves of each node, split among the running datasets in whole CPUs. In a search on CPUs
    that is 0 (two trials on 2 CPUs: 0.5 CPU of training each, 1 CPU left for 2 datasets):
    tasks that need CPU then run one at a time, Ray Data warns that "the job may hang
    forever", and each such dataset's scheduling loop spins on about a quarter of a CPU
    (bench/RESULTS.md). Tasks that declare none are budgeted by the object store alone.

    With ``features`` (a feature cache folder, see :func:`sevlm.feature_encoding.cache_features`)
    rows carry the cached ``image_features`` instead of ``pixel_values``: no image is decoded.
    Paintings the cache lacks are dropped and counted by the reason it recorded.

    Every dataset delivers its rows in the order of its records (``preserve_order``), not in
    the order its tasks happen to finish: the same seed gives the same batches on a busy
    machine as on an idle one, and a run resumed inside a pass skips exactly the batches it
    trained before. Pass ``dataset.context.execution_options`` to Ray Train's ``DataConfig``:
    Train otherwise replaces them with the global context's.
    """
    if epochs_per_pass > 1 and epoch is not None:
        raise ValueError("epochs_per_pass > 1 needs epoch=None: the consumer pairs each epoch")
    if tasks is not None and tasks < 1:
        raise ValueError(f"tasks must be at least 1, got {tasks}")
    counter = DropCounter.remote()

    def decode(batch: dict) -> dict:  # Ray Data names the stage after the function
        out, dropped = decode_batch(batch, config, decode_threads)
        report_drops(counter, dropped)
        return out

    def lookup(batch: dict) -> dict:
        out, dropped = attach_features(batch, load_cached(str(features)))
        report_drops(counter, dropped)
        return out

    def encode(batch: dict) -> dict:
        return encode_batch(batch, config, epoch)

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    result = {}
    for split in splits:
        records = painting_records(data.split(split))
        if epochs_per_pass > 1:  # epoch is None: checked above
            records = epoch_records(records, epochs_per_pass, config.seed)
        ds = records_dataset(records, batch_size, cpus)
        if epoch is None and epochs_per_pass == 1:
            # the records, not the pixels; its tasks still cost about 5 s a read on 2 CPUs
            # (bench/RESULTS.md), the price of chance-level batch mixing at ArtEmis's size
            seed = RandomSeedConfig(seed=config.seed)
            ds = ds.random_shuffle(seed=seed, num_cpus=SHUFFLE_CPUS)
        opts = {
            "batch_size": batch_size, "batch_format": "numpy", "num_cpus": num_cpus,
            "compute": ray.data.TaskPoolStrategy(size=tasks or cpus),
        }  # fmt: skip
        if epoch is not None:
            ds = ds.map_batches(encode, **opts)
        result[split] = ds.map_batches(decode if features is None else lookup, **opts)
        result[split].context.execution_options.preserve_order = True
    return Pipeline(result, counter)


def records_dataset(records: dict[str, list], batch_size: int, tasks: int) -> ray.data.Dataset:
    """Records (columns of equal length) as a Ray Dataset of :func:`block_count` Arrow blocks,
    slices of one table in record order.

    Made with ``from_blocks``, which reads each block's size and schema here: ``from_arrow``
    and ``from_huggingface`` ask a Ray task for them, which took 1 to 2 s in the fresh process
    of each sweep trial (bench/RESULTS.md)."""
    table = pa.Table.from_pydict(records)
    rows = table.num_rows
    size = max(1, math.ceil(rows / block_count(rows, batch_size, tasks)))
    starts = range(0, max(rows, 1), size)
    return ray.data.from_blocks([table.slice(start, size) for start in starts])


def report_drops(counter: ray.actor.ActorHandle, dropped: dict[str, list[str]]) -> None:
    """Tell ``counter`` the keys a stage dropped, by reason (waiting: none is lost if the
    task ends right after)."""
    for reason, keys in dropped.items():
        ray.get(counter.add.remote(reason, keys))


PASS_ROWS = 20_000
"""Rows a training pass streams at least, where the run is that long: enough that the
second or so a Ray Data read takes to start is a small share of it."""


def epochs_per_pass(rows: int, batch_size: int, max_steps: int) -> int:
    """Epochs the trainer streams in one read of its dataset: as many as make
    :data:`PASS_ROWS` rows, but no more than the run needs (``max_steps`` batches of
    ``batch_size`` images, the workers together, from a split of ``rows``). ArtEmis's 68k
    training images make a pass of one epoch; the sample's few hundred, one pass for the
    whole run."""
    if rows < 1:
        return 1
    needed = math.ceil(max_steps * batch_size / rows)
    return max(1, min(needed, math.ceil(PASS_ROWS / rows)))


def block_count(rows: int, batch_size: int, tasks: int) -> int:
    """Blocks of a split's records: about sixteen batches each, at least four per concurrent
    task, none smaller than a batch. One block (Ray's default for an in-memory table) would
    decode a whole epoch in one task, on one CPU, before the first batch arrived; many small
    ones lose time between tasks, since Ray Data notices a finished task only at its next
    poll, up to 0.1 s later (``WAIT_FOR_TASK_COMPLETION_TIMEOUT_S`` in Ray Data 2.60).

    ``tasks`` is the most a dataset runs at once, the cluster's CPUs (:func:`build_pipeline`
    caps them there or lower: without a cap Ray starts more worker processes than it keeps
    idle, and every epoch would pay their start again)."""
    by_batches = math.ceil(rows / (16 * batch_size))
    return max(1, min(math.ceil(rows / batch_size), max(4 * tasks, by_batches)))
