"""Benchmark: images/s through the Ray Data pipeline vs a ``torch.utils.data.DataLoader`` with
the same number of CPUs, side by side in one run (a benchmark, not a test).

    python bench/data.py [--paintings 1000] [--source-size 512] [--cpus N] [--repeats 3]

Both sides read the training split of one generated ArtEmis-format data set
(:func:`sevlm.sample.write_sample`, ``--source-size`` pixel JPEGs: WikiArt as ArtEmis uses it
is rescaled to 600 pixels on the long side, about 600 x 450 = 270k pixels, and a 512-pixel
square has 262k) and decode every image to the model's ``--size`` (224) with the same
function, :func:`sevlm.examples.decode_batch`:

- Ray Data: the real pipeline, the dataset a one-worker run's worker reads for each pass,
  ``TrainStream.shard(pass, 0)`` (:class:`sevlm.pipeline.TrainStream`, passes of
  ``--epochs-per-pass`` E epochs, as the trainer reads a split this small), in a local Ray
  started with ``num_cpus=N``; this process reads it with ``iter_batches`` as
  ``sevlm_train/loop.py`` does (numpy batches). A pass leaves out its last incomplete batch,
  as training does. Each decode task decodes a batch with ``--decode-threads`` threads (the
  pipeline's default, 2); a batch of one row, as the DataLoader's, has nothing to share
  between threads.
- DataLoader: a map-style dataset whose ``__getitem__`` runs ``decode_batch`` on one row,
  ``num_workers=N`` persistent workers, the default collate (tensors in shared memory),
  ``shuffle=True``.
- One process (a reference, ``--no-reference`` skips it): ``decode_batch`` in this process,
  no workers: what one CPU does.

Each side reads passes of E epochs: the DataLoader and the reference epoch after epoch, Ray
Data in one read, each pass a new dataset (its own order, as in training). Each side runs one
untimed warm-up pass (worker processes start, files enter the page cache), then ``--repeats``
timed passes, alternating sides so that a change in the machine's load hits all of them; the
figure is the median. Ray's start-up is not timed; the pipeline's planning and task launches at
the start of each read are, since training pays them every pass. On CUDA, each batch's pixels
are copied to the GPU in every loop.

Besides wall time, the script reads from ``/proc`` the CPU time (user + system) that each
side's processes spent in each pass: this process plus the DataLoader's workers, or this
process plus every Ray process it started (workers, raylet, GCS). (A pass in which one of the
side's processes ended has no CPU figure, and neither has the side's row: the ended process's
time may be lost.) CPU seconds per epoch show how much work each side does per image, and CPU
seconds over wall seconds how many CPUs it kept busy: figures that mean something on a machine
that other jobs share, where images/s alone do not (the script prints the load average before
and after, and warns when other jobs loaded the machine before it started). After the table,
each side's CPU seconds per epoch are split between this process (the consumer; for Ray Data
also the streaming executor, which runs in the process that iterates) and the side's other
processes. "First batch" is
the time from asking for a pass to its first batch: Ray Data plans and launches the pipeline
anew for every read (about a second on this kind of machine), which is why the trainer reads
several short epochs at once. After the table, the script says how many tasks Ray ran the
decode as, and how many new Ray worker processes each pass started (each imports torch and
transformers to run ``decode_batch``).

Every pass must deliver every training image exactly E times (Ray Data: the rows of its
pass), figures are per image delivered,
and in the warm-up Ray Data and the DataLoader must agree on every image's pixels, or the
script exits non-zero with no table. Ray's workers run at this process's nice level (Ray's
default is 15, below the DataLoader's workers, which inherit this process's); ``--ray-niceness
15`` measures Ray's default. The target of issue 7: Ray Data at least as many images/s as the
DataLoader (ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from machine import load_average, print_header
from torch.utils.data import DataLoader, Dataset

from sevlm.artemis import DataSource, load_artemis
from sevlm.examples import ExampleConfig, decode_batch, painting_records
from sevlm.sample import write_sample

RAY, LOADER, SERIAL = "Ray Data", "DataLoader", "one process"


class BenchError(RuntimeError):
    """The run is broken: its figures must not be reported."""


class PaintingImages(Dataset):
    """Painting records, one decoded image each: the pipeline's decode, one row at a time."""

    def __init__(self, records: dict[str, list], config: ExampleConfig) -> None:
        self.records = records
        self.config = config

    def __len__(self) -> int:
        return len(self.records["key"])

    def __getitem__(self, index: int) -> dict:
        row = {name: [values[index]] for name, values in self.records.items()}
        out, dropped = decode_batch(row, self.config)
        if dropped:
            raise BenchError(f"image dropped: {dropped}")
        return {name: values[0] for name, values in out.items()}


# ---------------------------------------------------------------------------------------------
# CPU time of process trees, from /proc (Linux)


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds: user + system, plus those of reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        # After the command: state, ppid, ..., utime (14th field), stime, cutime, cstime.
        table[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    return table


def descendants(table: dict[int, tuple[int, float]], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


@dataclass(frozen=True)
class CpuReading:
    """A side's CPU seconds so far, and the processes they were summed over."""

    seconds: float
    pids: frozenset[int]
    own: float
    """This process's share of ``seconds``: the consumer, and for Ray Data also the
    streaming executor's scheduling loop, which runs in the process that iterates."""

    def since(self, before: CpuReading) -> tuple[float, float] | None:
        """CPU seconds from ``before`` to this reading, in all and in this process; None when
        a process of ``before`` ended in between: its time may have gone with it (Ray ends
        idle workers, and their parent need not be one of the side's processes), so the
        difference could be short."""
        if not before.pids <= self.pids:
            return None
        return self.seconds - before.seconds, self.own - before.own


@dataclass
class CpuMeter:
    """CPU seconds of this process and, per side, of the processes that side started."""

    me: int = field(default_factory=os.getpid)
    loader_roots: set[int] = field(default_factory=set)

    def note_loader_workers(self) -> None:
        """Call when the DataLoader's workers exist and nothing else does: this process's
        children are then the DataLoader's."""
        table = proc_table()
        self.loader_roots = {pid for pid, (parent, _) in table.items() if parent == self.me}

    def seconds(self, side: str) -> CpuReading | None:
        try:
            table = proc_table()
        except OSError:
            return None
        if side == LOADER:
            pids = descendants(table, self.loader_roots)
        elif side == RAY:
            everyone = descendants(table, [self.me])
            pids = everyone - descendants(table, self.loader_roots)
            pids.discard(self.me)
        else:
            pids = set()
        own = sum(os.times()[:2])  # this process, all threads; not its children
        return CpuReading(own + sum(table[pid][1] for pid in pids), frozenset(pids), own)


# ---------------------------------------------------------------------------------------------
# Passes


@dataclass
class Pass:
    seconds: float
    first_batch: float
    cpu_seconds: float | None
    own_cpu_seconds: float | None
    """This process's share of ``cpu_seconds``."""
    keys: list[str]
    sums: dict[str, float]


def consume(
    batches: Callable[[], Iterable[dict]],
    device: torch.device,
    size: int,
    checksums: bool,
    cpu: Callable[[], CpuReading | None],
) -> Pass:
    """Read a pass as training does (pixels to ``device``), timed."""
    keys: list[str] = []
    sums: dict[str, float] = {}
    cpu_before = cpu()
    started = time.perf_counter()
    first_batch = None
    for batch in batches():
        if first_batch is None:
            first_batch = time.perf_counter() - started
        pixels = torch.as_tensor(batch["pixel_values"]).to(device, non_blocking=True)
        batch_keys = [str(k) for k in batch["key"]]
        if tuple(pixels.shape) != (len(batch_keys), 3, size, size):
            raise BenchError(f"pixel_values {tuple(pixels.shape)} for {len(batch_keys)} keys")
        keys.extend(batch_keys)
        if checksums:
            sums.update(zip(batch_keys, pixels.double().sum(dim=(1, 2, 3)).tolist(), strict=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    cpu_after = cpu()
    used = None if cpu_before is None or cpu_after is None else cpu_after.since(cpu_before)
    total, own = used or (None, None)
    return Pass(seconds, first_batch or seconds, total, own, keys, sums)


def check_pass(side: str, keys: list[str], expected: Counter) -> None:
    """``keys`` must be ``expected``: each image as many times as it counts."""
    got = Counter(keys)
    if got != expected:
        wrong = {k for k in got.keys() | expected.keys() if got[k] != expected[k]}
        raise BenchError(f"{side}: {len(wrong)} images delivered a wrong number of times")


def pass_keys(stream, stream_pass: int, keys: list[str]) -> Counter:
    """The images a one-worker pass of ``stream`` delivers: its steps' rows."""
    index, _ = stream.order(stream_pass)
    return Counter(keys[i] for i in index[: stream.share_rows])


def ray_workers(logs: Path) -> int:
    """Ray worker processes started so far in this session (one ``worker-*.out`` log each)."""
    return len(list(logs.glob("worker-*.out")))


# ---------------------------------------------------------------------------------------------
# Reporting


def median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def per_epoch(runs: list[Pass], images: int, value: Callable[[Pass], float | None]) -> float | None:
    """Median of ``value`` per epoch delivered (``images`` an epoch) over the passes."""
    return median_or_none(
        [None if value(r) is None else value(r) * images / len(r.keys) for r in runs]
    )


def cpu_split(runs: list[Pass], images: int) -> str:
    """Median CPU seconds per epoch in this process and in the side's others."""
    own = per_epoch(runs, images, lambda r: r.own_cpu_seconds)
    total = per_epoch(runs, images, lambda r: r.cpu_seconds)
    if own is None or total is None:
        return "n/a"
    return f"{own:.2f} here, {total - own:.2f} elsewhere"


def print_table(passes: dict[str, list[Pass]], images: int, settings: dict[str, str]) -> None:
    """Per-epoch figures of each side (``images`` an epoch): medians over its passes."""
    print(
        "| loader | settings | s per epoch | images/s | first batch s | CPU s per epoch | "
        "CPUs busy | images per CPU s | passes (s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for side, runs in passes.items():
        wall = per_epoch(runs, images, lambda e: e.seconds)
        first = statistics.median(e.first_batch for e in runs)
        cpu = per_epoch(runs, images, lambda e: e.cpu_seconds)
        busy = median_or_none(
            [None if e.cpu_seconds is None else e.cpu_seconds / e.seconds for e in runs]
        )
        print(
            f"| {side} | {settings[side]} | {wall:.2f} | {images / wall:.1f} | {first:.2f} | "
            f"{'n/a' if cpu is None else f'{cpu:.2f}'} | "
            f"{'n/a' if busy is None else f'{busy:.2f}'} | "
            f"{'n/a' if not cpu else f'{images / cpu:.1f}'} | "
            + ", ".join(f"{e.seconds:.2f}" for e in runs)
            + " |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paintings", type=int, default=1000, help="sample size (1000)")
    parser.add_argument(
        "--source-size", type=int, default=512, help="side of the JPEGs on disk (512)"
    )
    parser.add_argument("--size", type=int, default=224, help="model image size (224)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs for each side")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side (3)")
    parser.add_argument(
        "--epochs-per-pass",
        type=int,
        default=3,
        help="epochs in a pass (3): Ray Data reads them in one go, as the trainer does",
    )
    parser.add_argument(
        "--prefetch-batches", type=int, default=1, help="Ray iter_batches prefetch_batches (1)"
    )
    parser.add_argument(
        "--decode-threads",
        type=int,
        help="TrainStream decode_threads (default: its own, sevlm.pipeline.DECODE_THREADS)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        help="TrainStream tasks: decode tasks at once (default: --cpus, as one run's)",
    )
    parser.add_argument(
        "--unordered",
        action="store_true",
        help="Ray Data delivers blocks as their tasks finish (preserve_order off; the pipeline "
        "keeps the records' order since 2026-12-04): to measure what the order costs",
    )
    parser.add_argument(
        "--ray-niceness",
        type=int,
        help="nice level of Ray's worker processes (default: this process's own, which the "
        "DataLoader's workers inherit; Ray's own default is 15)",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the reference: the same decode in this one process (1 CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where to write (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data set")
    args = parser.parse_args(argv)
    if args.cpus < 1:
        parser.error("--cpus must be at least 1")
    if args.epochs_per_pass < 1 or args.repeats < 1:
        parser.error("--epochs-per-pass and --repeats must be at least 1")
    if args.decode_threads is not None and args.decode_threads < 1:
        parser.error("--decode-threads must be at least 1")
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    niceness = os.nice(0) if args.ray_niceness is None else args.ray_niceness
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    if args.workdir is None:
        workdir, own_workdir = Path(tempfile.mkdtemp(prefix="sevlm-bench-data-")), True
    else:
        workdir, own_workdir = args.workdir.absolute(), False
        workdir.mkdir(parents=True, exist_ok=True)
    print_header("sevlm data pipeline benchmark: Ray Data vs torch DataLoader")
    print(f"device:   {device.type}")
    print(f"workdir:  {workdir}")

    root = workdir / "sample"
    meter = CpuMeter()
    ray_started = False
    try:
        started = time.perf_counter()
        write_sample(root, args.paintings, seed=args.seed, image_size=args.source_size)
        data = load_artemis(DataSource.resolve(data=str(root)), seed=args.seed)
        records = painting_records(data.split("train"))
        expected = set(records["key"])
        config = ExampleConfig(image_size=args.size)
        print(
            f"data:     {args.paintings} paintings, {len(expected)} in the training split, "
            f"{args.source_size}x{args.source_size} JPEGs -> {args.size} px "
            f"(generated in {time.perf_counter() - started:.1f} s)",
            flush=True,
        )

        # The DataLoader's workers fork before Ray starts (no gRPC threads in the parent);
        # persistent, they then serve every epoch.
        per_pass = args.epochs_per_pass
        loader = DataLoader(
            PaintingImages(records, config),
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.cpus,
            persistent_workers=True,
            pin_memory=device.type == "cuda",
        )

        def loader_batches() -> Iterable[dict]:
            for _ in range(per_pass):
                yield from loader

        def serial_batches() -> Iterable[dict]:
            for _ in range(per_pass):
                for start in range(0, len(records["key"]), args.batch):
                    batch = {k: v[start : start + args.batch] for k, v in records.items()}
                    yield decode_batch(batch, config)[0]

        every_image = Counter({key: per_pass for key in expected})
        expect = {LOADER: lambda: every_image, SERIAL: lambda: every_image}

        def run(side: str, batches: Callable[[], Iterable[dict]], checksums: bool) -> Pass:
            one = consume(batches, device, args.size, checksums, lambda: meter.seconds(side))
            check_pass(side, one.keys, expect[side]())
            return one

        warm = run(LOADER, loader_batches, True)
        meter.note_loader_workers()
        print(f"warm-up:  {LOADER} pass {warm.seconds:.2f} s (its workers start)", flush=True)

        import ray

        from sevlm.pipeline import DECODE_THREADS, TrainStream

        threads = args.decode_threads or DECODE_THREADS

        started = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=args.cpus,
            num_gpus=torch.cuda.device_count(),
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=str(workdir / "ray"),
            _system_config={"worker_niceness": niceness},
        )
        ray_started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        print(f"ray:      started in {time.perf_counter() - started:.1f} s (not timed)")
        stream = dataclasses.replace(
            TrainStream.create(
                data, config, per_worker=args.batch, max_steps=1, decode_threads=threads,
                tasks=args.tasks or args.cpus,
            ),
            epochs_per_pass=per_pass,
        )  # fmt: skip
        passes_read = itertools.count()
        last: dict[str, ray.data.Dataset | int] = {}

        def ray_batches() -> Iterable[dict]:
            last["pass"] = next(passes_read)
            last["dataset"] = dataset = stream.shard(last["pass"], 0)
            dataset.context.execution_options.preserve_order = not args.unordered
            return dataset.iter_batches(
                batch_size=args.batch,
                batch_format="numpy",
                prefetch_batches=args.prefetch_batches,
                drop_last=True,
            )

        expect[RAY] = lambda: pass_keys(stream, last["pass"], records["key"])
        ray_warm = run(RAY, ray_batches, True)
        print(f"warm-up:  {RAY} pass {ray_warm.seconds:.2f} s (its workers start)", flush=True)
        differ = [k for k, v in ray_warm.sums.items() if not np.isclose(v, warm.sums[k], rtol=1e-6)]
        if differ:
            raise BenchError(f"{len(differ)} images decode differently, e.g. {differ[0]}")
        if stream.dropped():
            raise BenchError(f"the pipeline dropped images: {stream.dropped()}")

        sides = {RAY: ray_batches, LOADER: loader_batches}
        if args.reference:
            sides[SERIAL] = serial_batches
        logs = workdir / "ray" / "session_latest" / "logs"
        workers_before = ray_workers(logs)
        passes: dict[str, list[Pass]] = {side: [] for side in sides}
        for repeat in range(args.repeats):
            for side, batches in sides.items():
                one = run(side, batches, False)
                passes[side].append(one)
                cpu = (
                    ", CPU s n/a (a process ended in the pass)"
                    if one.cpu_seconds is None
                    else f", {one.cpu_seconds:6.2f} CPU s ({one.own_cpu_seconds:5.2f} here)"
                )
                print(
                    f"pass {repeat + 1}: {side:11s} {one.seconds:6.2f} s{cpu}, "
                    f"{len(one.keys) / one.seconds:6.1f} images/s, first batch after "
                    f"{one.first_batch:.2f} s",
                    flush=True,
                )
        new_workers = (ray_workers(logs) - workers_before) / args.repeats
        tasks = re.search(r"MapBatches\(decode\): (\d+) tasks executed", last["dataset"].stats())
        end_load = load_average()
    except BenchError as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if args.keep:
            print(f"\nkept: {workdir}")
        elif own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(workdir / "ray", ignore_errors=True)

    images = len(expected)
    settings = {
        RAY: f"ray.init(num_cpus={args.cpus}), TrainStream(epochs_per_pass={per_pass}, "
        f"decode_threads={threads}, tasks={args.tasks or args.cpus}).shard(pass, 0), "
        f"preserve_order={not args.unordered}, "
        f"iter_batches(prefetch_batches={args.prefetch_batches}), worker niceness {niceness}",
        LOADER: f"num_workers={args.cpus}, persistent_workers, shuffle=True",
        SERIAL: "reference: decode_batch in this process, no workers",
    }
    print(
        f"\n{images} images per epoch ({args.source_size} px JPEGs -> {args.size} px), batch "
        f"{args.batch}, {args.cpus} CPUs each side, median of {args.repeats} passes of "
        f"{per_pass} epochs"
    )
    print_table(passes, images, settings)
    print(
        f"\nRay Data: decode ran as {tasks.group(1) if tasks else 'n/a'} task(s) in the last "
        f"pass; {new_workers:.1f} new Ray worker processes per timed pass"
    )
    print(
        "CPU s per epoch in this process (the consumer; for Ray Data also the streaming "
        "executor) and in the side's other processes: "
        + "; ".join(f"{side} {cpu_split(runs, images)}" for side, runs in passes.items())
    )
    print(f"load average at the end: {end_load} (1, 5, 15 min)")
    rate = {side: 1 / per_epoch(runs, images, lambda e: e.seconds) for side, runs in passes.items()}
    print(f"Ray Data / DataLoader: {rate[RAY] / rate[LOADER]:.2f}x images/s (target >= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
