"""The Ray Data pipeline: dataset splits -> Ray Datasets of model inputs.

Painting records go to Ray Data as Arrow blocks (:func:`records_dataset`); decoding and
tokenizing are ``map_batches`` stages whose tasks declare no CPU and are capped in number (see
:func:`build_pipeline`), so they share a small machine with training workers. Images that fail
to decode are dropped and counted by a zero-CPU actor.

Training reads a :class:`TrainStream`: each worker of a run builds the dataset of its own
share of each pass (:meth:`TrainStream.shard`), whose order is a function of the seed and the
epoch alone, so a run resumed anywhere reads exactly the rows it had left.

With a frozen encoder, :func:`sevlm.feature_encoding.cache_features` runs it once over the
images into a :mod:`sevlm.feature_cache`, and the datasets read features from it (``features``)
instead of decoding pixels.

Ray Data runs this module's stages, and the drop counter, in fresh worker processes, which
import what the stages reference: this module and what it imports stay free of torch and
transformers (about 4 s of imports per process on 2 CPUs; bench/RESULTS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from sevlm.artemis import SPLITS, ArtemisData
from sevlm.examples import ExampleConfig, decode_batch, encode_batch, painting_records
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
    epoch: int = 0,
    splits: tuple[str, ...] = SPLITS,
    batch_size: int = 32,
    num_cpus: float = 0.0,
    features: Path | str | None = None,
    decode_threads: int = DECODE_THREADS,
    tasks: int | None = None,
) -> Pipeline:
    """Lazy Ray Datasets of model inputs for ``splits``, in record order, pairings drawn for
    ``epoch``. (Training reads a :class:`TrainStream` instead.)

    Each decode task decodes a batch with ``decode_threads`` threads (see
    :data:`DECODE_THREADS`). At most ``tasks`` tasks of a stage run at once (default: the
    cluster's CPUs), each declaring ``num_cpus`` to Ray: none by default, since Ray Data 2.60
    budgets a dataset's CPUs by what Ray Train leaves of each node, split among the running
    datasets in whole CPUs. In a search on CPUs that is 0 (two trials on 2 CPUs: 0.5 CPU of
    training each, 1 CPU left for 2 datasets): tasks that need CPU then run one at a time, Ray
    Data warns that "the job may hang forever", and each such dataset's scheduling loop spins
    on about a quarter of a CPU (bench/RESULTS.md). Tasks that declare none are budgeted by the
    object store alone.

    With ``features`` (a feature cache folder, see :func:`sevlm.feature_encoding.cache_features`)
    rows carry the cached ``image_features`` instead of ``pixel_values``: no image is decoded.
    Paintings the cache lacks are dropped and counted by the reason it recorded.

    Every dataset delivers its rows in the order of its records (``preserve_order``), not in
    the order its tasks happen to finish.
    """
    if tasks is not None and tasks < 1:
        raise ValueError(f"tasks must be at least 1, got {tasks}")
    counter = DropCounter.remote()

    def encode(batch: dict) -> dict:  # Ray Data names the stage after the function
        return encode_batch(batch, config, epoch)

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    opts = stage_options(batch_size, tasks or cpus, num_cpus)
    result = {}
    for split in splits:
        ds = records_dataset(painting_records(data.split(split)), batch_size, cpus)
        ds = ds.map_batches(encode, **opts)
        result[split] = model_inputs(ds, config, counter, features, decode_threads, opts)
    return Pipeline(result, counter)


@dataclass(frozen=True)
class TrainStream:
    """A training split read pass after pass by the ``world`` workers of a run.

    A pass is ``epochs_per_pass`` epochs (see :func:`epochs_per_pass`), each epoch in its own
    random order that depends on ``example.seed`` and the epoch alone; the pass is cut into
    steps of ``world`` x ``per_worker`` rows (the last, incomplete step left out), and worker
    ``rank`` reads its slice of each step: its share of the pass. Rows carry their ``epoch``
    (counted from the run's start) and ``share_row``, their place in the worker's share.

    Nothing in it depends on what was read before: a worker resumed after row ``r`` of its
    share of pass ``p`` reads ``shard(p, rank, start=r + 1)``, the very rows a run without
    the interruption would have read next, and decodes none of those before them.
    """

    records: ray.ObjectRef
    """The split's painting records, an Arrow table in Ray's object store."""
    rows: int
    """Records in the split."""
    epochs_per_pass: int
    per_worker: int
    """Rows each worker trains on a step."""
    world: int
    """Workers of the run."""
    example: ExampleConfig
    """How records become model inputs; its ``seed`` sets every epoch's order."""
    counter: ray.actor.ActorHandle
    """The :class:`DropCounter` of every worker's reads."""
    features: str | None = None
    """Feature cache folder to read instead of decoding images."""
    tasks: int = 1
    """Decode tasks each worker's dataset runs at once."""
    decode_threads: int = DECODE_THREADS

    @classmethod
    def create(
        cls, data: ArtemisData, example: ExampleConfig, *, per_worker: int, world: int = 1,
        max_steps: int, tasks: int = 1, features: Path | str | None = None,
        decode_threads: int = DECODE_THREADS,
    ) -> TrainStream:  # fmt: skip
        """The stream of ``data``'s training split for a run of ``max_steps`` steps; ``tasks``
        is the run's share of decode tasks, split among its workers (at least one each: a
        worker with none would wait for ever, so more workers than tasks run a task each)."""
        table = pa.Table.from_pydict(painting_records(data.split("train")))
        batch = per_worker * world
        return cls(
            records=ray.put(table), rows=table.num_rows,
            epochs_per_pass=epochs_per_pass(table.num_rows, batch, max_steps),
            per_worker=per_worker, world=world, example=example,
            counter=DropCounter.remote(), features=None if features is None else str(features),
            tasks=max(1, tasks // world), decode_threads=decode_threads,
        )  # fmt: skip

    @property
    def steps_per_pass(self) -> int:
        return self.rows * self.epochs_per_pass // (self.per_worker * self.world)

    def order(self, stream_pass: int) -> tuple[np.ndarray, np.ndarray]:
        """The records of a pass, in its order, and the epoch of each."""
        first = stream_pass * self.epochs_per_pass
        epochs = range(first, first + self.epochs_per_pass)
        seed = self.example.seed
        index = [np.random.default_rng([seed, e]).permutation(self.rows) for e in epochs]
        return np.concatenate(index), np.repeat(np.asarray(epochs), self.rows)

    @property
    def share_rows(self) -> int:
        """Rows of a worker's share of a pass."""
        return self.steps_per_pass * self.per_worker

    def shard(self, stream_pass: int, rank: int, start: int = 0) -> ray.data.Dataset:
        """Worker ``rank``'s rows of a pass from row ``start`` of its share on, as a Ray
        Dataset of model inputs (pairs not drawn yet: the consumer draws each row's for its
        ``epoch``). Its tasks prefer the node that calls this (the worker's).

        Batches are cut from the rows that decode: an image that fails drops its row, and
        the worker's later batches of the pass shift by one. So a worker resumes from the
        ``share_row`` after the last one it trained, not from a batch's place in the layout."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} is not one of {self.world} workers")
        if not 0 <= start <= self.share_rows:
            raise ValueError(f"row {start} is outside a share of {self.share_rows} rows")
        index, epochs = self.order(stream_pass)
        steps = self.steps_per_pass
        per_step = self.per_worker * self.world
        mine = np.arange(steps * per_step).reshape(steps, self.world, self.per_worker)
        mine = mine[:, rank].ravel()[start:]
        table = ray.get(self.records).take(index[mine])
        table = table.append_column("epoch", pa.array(epochs[mine]))
        table = table.append_column("share_row", pa.array(np.arange(start, self.share_rows)))
        ds = records_dataset(table, self.per_worker, self.tasks)
        ds.context.print_on_execution_start = False  # two log lines per worker and pass
        # Ray Data 2.60 ignores execution_options.locality_with_output (a no-op). The worker's
        # node by its label, any node where that cannot be (a scheduling strategy would do it
        # too, but only through ray_remote_args, which Ray 2.64 removes)
        here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
        opts = {
            **stage_options(self.per_worker, self.tasks, 0.0),
            "label_selector": here, "fallback_strategy": [{"label_selector": {}}],
        }  # fmt: skip
        return model_inputs(
            ds, self.example, self.counter, self.features, self.decode_threads, opts
        )

    def dropped(self) -> dict[str, int]:
        """Paintings the workers' reads dropped so far, by reason."""
        return ray.get(self.counter.get.remote())


def stage_options(batch_size: int, tasks: int, num_cpus: float) -> dict:
    """``map_batches`` options of a stage: ``tasks`` at once, each declaring ``num_cpus``."""
    return {
        "batch_size": batch_size, "batch_format": "numpy", "num_cpus": num_cpus,
        "compute": ray.data.TaskPoolStrategy(size=tasks),
    }  # fmt: skip


def model_inputs(
    ds: ray.data.Dataset,
    config: ExampleConfig,
    counter: ray.actor.ActorHandle,
    features: Path | str | None,
    decode_threads: int,
    opts: dict,
) -> ray.data.Dataset:
    """``ds`` with each row's pixels (or, with ``features``, its cached image features),
    delivered in record order; what cannot be read is dropped and told to ``counter``."""

    def decode(batch: dict) -> dict:  # Ray Data names the stage after the function
        out, dropped = decode_batch(batch, config, decode_threads)
        report_drops(counter, dropped)
        return out

    def lookup(batch: dict) -> dict:
        out, dropped = attach_features(batch, load_cached(str(features)))
        report_drops(counter, dropped)
        return out

    ds = ds.map_batches(decode if features is None else lookup, **opts)
    # the same seed gives the same batches on a busy machine as on an idle one
    ds.context.execution_options.preserve_order = True
    return ds


def records_dataset(
    records: dict[str, list] | pa.Table, batch_size: int, tasks: int
) -> ray.data.Dataset:
    """Records (columns of equal length, or an Arrow table) as a Ray Dataset of
    :func:`block_count` Arrow blocks, slices of one table in record order.

    Made with ``from_blocks``, which reads each block's size and schema here: ``from_arrow``
    and ``from_huggingface`` ask a Ray task for them, which took 1 to 2 s in the fresh process
    of each sweep trial (bench/RESULTS.md)."""
    table = records if isinstance(records, pa.Table) else pa.Table.from_pydict(records)
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

    ``tasks`` is the most a dataset runs at once (:func:`build_pipeline` caps them there or
    lower: without a cap Ray starts more worker processes than it keeps idle, and every epoch
    would pay their start again)."""
    by_batches = math.ceil(rows / (16 * batch_size))
    return max(1, min(math.ceil(rows / batch_size), max(4 * tasks, by_batches)))
