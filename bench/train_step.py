"""Benchmark: training samples/s and peak memory of each setting, one after the other:

- ``released``: the released recipe's settings: the frozen encoder runs on the pixels at every
  step, fp32. Images are decoded before timing, as its DataLoader workers would hide that.
- ``ours``: the encoder's output read from the feature cache, mixed precision where the device
  has it (bf16 / fp16; CPU stays fp32), ``torch.compile`` as ``train.compile: auto`` has it
  (inductor on CUDA, off on CPU). A bare PyTorch loop.
- ``ray``: ``ours`` through a Ray Train ``TorchTrainer`` with one worker, fed by the Ray Data
  pipeline the trainer uses (cache lookups in Ray Data tasks, several epochs per read as the
  trainer picks them): the cost of Ray itself.
- ``compiled`` (only when asked for in ``--settings``): ``ours`` with the model's forward
  through ``torch.compile`` (``--compile``, inductor by default). Its warm-up steps include
  the compilation, which is timed apart and printed.
- ``eager`` (only when asked for): ``ours`` never compiled (the same as ``ours`` on CPU).
- ``uncached`` (only when asked for): ``ours`` without the cache, the frozen encoder run on
  the pixels at every step: how much of ``ours / released`` is the cache and how much the rest
  (precision, compile), and the memory of training with the encoder in the step.

    python bench/train_step.py [--preset tiny] [--batch N] [--steps 30] [--warmup 5]
    python bench/train_step.py --settings ours,ray --steps 60 --rounds 5
    python bench/train_step.py --settings ours,compiled [--compile inductor]
    python bench/train_step.py --preset paper --settings released,uncached,ours  # GPU, no Ray

Each setting runs in its own process (a fresh peak memory): the same model, seed, batches
and per-step work (pairing and tokenizing each batch, the optimizer step). Images per second
count images (each with two sequences). With ``--rounds N`` every setting runs N times, in
alternating order, and the table shows medians; each ratio is the median of the rounds' own
ratios (the machine's speed drifts; a single round's Ray overhead varied by 0.08 between runs).
Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, else the training process's peak
resident memory (RSS, its whole footprint).
The encoder is frozen in every setting, as in the paper's preset, so that the cache applies.
The cache is written through Ray Data as the trainer writes it; where Ray is not installed (a
GPU machine with PyTorch only), by :func:`sevlm.frozen_encoder.cache_features_in_process`, which
writes the same files; the ``ray`` setting then cannot run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from machine import print_header

from sevlm.artemis import DataSource, load_artemis
from sevlm.config import ModelConfig, TrainConfig, preset_values
from sevlm.examples import ExampleConfig, decode_batch, encode_batch, painting_records
from sevlm.feature_cache import FeatureCache, attach_features
from sevlm.frozen_encoder import cache_features_in_process
from sevlm.sample import cached_sample
from sevlm.tokenizer import load_tokenizer
from sevlm.training import Stepper, to_device
from sevlm.weights import build_model

SETTINGS = ("released", "ours", "ray", "compiled", "uncached", "eager")
DEFAULT_SETTINGS = ("released", "ours", "ray")


def configs(args: argparse.Namespace, setting: str) -> tuple[ModelConfig, TrainConfig]:
    """The frozen-encoder model of ``--preset`` and the training config of ``setting``."""
    model = ModelConfig.preset(args.preset, freeze_vision=True).without_pretrained()
    compile_ = {"released": "off", "eager": "off", "compiled": args.compile}.get(setting, "auto")
    train = TrainConfig(
        **{
            **preset_values(args.preset).get("train", {}),
            "batch_size": args.batch,
            "grad_accum": args.grad_accum,
            "max_steps": 10_000,
            "precision": "fp32" if setting == "released" else args.precision,
            "compile": compile_,
        }
    )
    return model, train


def example_for(args: argparse.Namespace, model: ModelConfig) -> ExampleConfig:
    return ExampleConfig.for_model(model, DataSource.resolve(data=args.data).lexicon, seed=0)


def records_of(args: argparse.Namespace) -> dict[str, list]:
    data = load_artemis(DataSource.resolve(data=args.data))
    return painting_records(data.split("train"))


def batches_of(records: dict[str, list], size: int) -> Iterator[dict]:
    """Record batches of ``size`` in order, epoch after epoch (the last partial one dropped)."""
    n = len(records["key"]) // size
    if n == 0:
        raise SystemExit(f"error: fewer than {size} training paintings")
    while True:
        for i in range(n):
            yield {k: v[i * size : (i + 1) * size] for k, v in records.items()}


def measure(step, warmup: int, steps: int, device: torch.device) -> tuple[float, float]:
    """Seconds for ``steps`` calls of ``step(i)`` after ``warmup`` calls, and the warm-up's."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    started = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync()
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync()
    return time.perf_counter() - started, warm


def timed_result(step, args: argparse.Namespace, device: torch.device) -> dict:
    """A setting's figures: images/s over the timed steps, peak memory, warm-up seconds."""
    seconds, warm = measure(step, args.warmup, args.steps, device)
    return {
        "images_per_s": args.steps * args.batch / seconds,
        "peak_mib": peak_mib(device),
        "warmup_s": warm,
    }


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bare_loop(args: argparse.Namespace, setting: str) -> dict:
    """Any setting but ``ray``, in this process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_cfg, train_cfg = configs(args, setting)
    example = example_for(args, model_cfg)
    torch.manual_seed(0)
    model = build_model(model_cfg, load_tokenizer(model_cfg.tokenizer)).to(device)
    stepper = Stepper(model, model, train_cfg, device)
    source = batches_of(records_of(args), args.batch)
    if setting in ("released", "uncached"):  # decoded before timing: only the model's work
        cycle = [decode_batch(next(source), example)[0] for _ in range(args.distinct)]
        load = lambda i: cycle[i % len(cycle)]  # noqa: E731
    else:
        cache = FeatureCache.load(args.cache)
        load = lambda i: attach_features(next(source), cache)[0]  # noqa: E731

    def prepare(i: int) -> dict:
        return encode_batch(load(i), example, epoch=0)

    def step(i: int) -> None:
        stepper.step(to_device(prepare(i), device))

    result = timed_result(step, args, device)
    if args.phases:
        result["phases_ms"] = phase_times(prepare, stepper, args.phases, device)
    return result


def phase_times(prepare, stepper: Stepper, steps: int, device: torch.device) -> list[float]:
    """Mean milliseconds of each phase of a step, over ``steps`` more steps, each phase waited
    for before the next starts: preparing the batch (lookup or decoded pixels, pairing and
    tokenizing), copying it to the device, the optimizer step. Their sum can exceed the timed
    step, whose phases overlap with the device's queued work."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    totals = [0.0, 0.0, 0.0]
    for i in range(steps):
        started = time.perf_counter()
        batch = prepare(i)
        prepared = time.perf_counter()
        tensors = to_device(batch, device)
        sync()
        copied = time.perf_counter()
        stepper.step(tensors)
        sync()
        ended = time.perf_counter()
        for j, span in enumerate((prepared - started, copied - prepared, ended - copied)):
            totals[j] += span
    return [1000 * t / steps for t in totals]


def ray_worker_loop(config: dict) -> None:
    """The ``ours`` loop inside a Ray Train worker, fed by its Ray Data shard."""
    import ray.train

    args = argparse.Namespace(**config["args"])
    torch.set_num_threads(args.threads)
    device = ray.train.torch.get_device()
    model_cfg, train_cfg = configs(args, "ours")
    example = example_for(args, model_cfg)
    torch.manual_seed(0)
    model = build_model(model_cfg, load_tokenizer(model_cfg.tokenizer))
    wrapped = ray.train.torch.prepare_model(model)
    stepper = Stepper(wrapped, model, train_cfg, device)
    stream = config["stream"]

    def batches() -> Iterator[dict]:
        for stream_pass in range(10_000):  # as sevlm_train.loop reads it, pass after pass
            yield from stream.shard(stream_pass, 0).iter_batches(
                batch_size=args.batch, batch_format="numpy", drop_last=True
            )

    source = batches()

    def step(i: int) -> None:
        batch = next(source)
        stepper.step(to_device(encode_batch(batch, example, batch["epoch"]), device))

    result = timed_result(step, args, device)
    Path(config["out"]).write_text(json.dumps(result))  # Train V2 keeps no checkpoint-less metrics


def ray_loop(args: argparse.Namespace) -> dict:
    """``ours`` through Ray Train and Ray Data, one worker, on a local Ray of ``--cpus``."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from sevlm.pipeline import TrainStream
    from sevlm_train.driver import Scaling, scaling_config

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        model_cfg, _ = configs(args, "ours")
        data = load_artemis(DataSource.resolve(data=args.data))
        stream = TrainStream.create(  # as the trainer reads its data
            data, example_for(args, model_cfg), per_worker=args.batch,
            max_steps=args.warmup + args.steps, tasks=args.cpus, features=args.cache,
        )  # fmt: skip
        scaling, _ = scaling_config(Scaling(num_workers=1))
        with tempfile.TemporaryDirectory(prefix="sevlm-bench-ray-") as storage:
            out = Path(storage) / "result.json"
            TorchTrainer(
                ray_worker_loop,
                train_loop_config={
                    "args": {**vars(args), "cache": str(args.cache)},
                    "out": str(out),
                    "stream": stream,
                },
                scaling_config=scaling,
                run_config=ray.train.RunConfig(name="bench", storage_path=storage),
            ).fit()
            return json.loads(out.read_text())
    finally:
        ray.shutdown()


def build_cache(args: argparse.Namespace) -> Path:
    """The feature cache of the training images, written by the real Ray Data path (in this
    process when Ray is not installed)."""
    model_cfg, _ = configs(args, "ours")
    data = load_artemis(DataSource.resolve(data=args.data))
    printer = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if not HAVE_RAY:
        return cache_features_in_process(
            data, example_for(args, model_cfg), model_cfg, 0, args.cache_root,
            splits=("train",), printer=printer,
        )  # fmt: skip
    import ray

    from sevlm.feature_encoding import cache_features

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        return cache_features(
            data, example_for(args, model_cfg), model_cfg, 0, args.cache_root,
            splits=("train",), printer=printer,
        )  # fmt: skip
    finally:
        ray.shutdown()


HAVE_RAY = importlib.util.find_spec("ray") is not None

RATIOS = [
    ("ours", "released", "ours / released: {:.2f}x (target on GPU, paper preset: >= 3x)"),
    ("uncached", "released", "uncached / released: {:.2f}x (all but the cache)"),
    ("ours", "uncached", "ours / uncached: {:.2f}x (the feature cache alone)"),
    ("ours", "eager", "ours / eager: {:.2f}x (train.compile auto alone)"),
    ("ray", "ours", "ray / ours (bare loop): {:.3f} (target: >= 0.90)"),
    ("compiled", "ours", "compiled / ours: {:.2f}x"),
]
"""Ratios printed when both settings ran: (numerator, denominator, line)."""


def run_child(args: argparse.Namespace, setting: str) -> dict:
    """One setting in a child process: its own peak memory, no state shared."""
    argv = [sys.executable, __file__, "--only", setting, "--cache", str(args.cache)]
    for name in ("preset", "data", "batch", "steps", "warmup", "distinct", "threads", "cpus",
                 "precision", "compile", "grad_accum", "phases"):  # fmt: skip
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(argv, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"error: setting {setting} failed (exit {out.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--data", default=None, help="dataset folder (default: the sample)")
    parser.add_argument("--batch", type=int, help="images a step (default: the preset's)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--distinct", type=int, default=8, help="released: batches decoded")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cpus", type=float, default=os.cpu_count(), help="Ray's CPUs")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--compile", default="inductor", help="the compiled setting's backend: inductor|aot_eager"
    )
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every setting this many times, in alternating order; figures are medians",
    )
    parser.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help=f"comma-separated, of {', '.join(SETTINGS)} (default: {','.join(DEFAULT_SETTINGS)})",
    )
    parser.add_argument("--cache-root", type=Path, help="feature cache root (default: temp)")
    parser.add_argument(
        "--phases",
        type=int,
        default=0,
        help="after timing, this many more steps with each phase timed apart (not for ray)",
    )
    parser.add_argument("--only", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = args.data or str(cached_sample())
    args.batch = args.batch or preset_values(args.preset)["train"]["batch_size"]
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        parser.error(f"--settings: unknown {', '.join(sorted(unknown))}")
    if "ray" in args.settings.split(",") and not HAVE_RAY and not args.only:
        parser.error("--settings: 'ray' needs Ray installed; leave it out on a machine without")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def run_rounds(args: argparse.Namespace, settings: list[str]) -> list[dict[str, dict]]:
    """Every setting once a round, in reverse order every other round, so that a drift in
    the machine's speed hits each setting alike."""
    rounds = []
    for i in range(args.rounds):
        order = settings if i % 2 == 0 else settings[::-1]
        results = {}
        for setting in order:
            results[setting] = run_child(args, setting)
            if args.rounds > 1:
                rate = results[setting]["images_per_s"]
                print(f"round {i + 1}: {setting} {rate:.1f} images/s", flush=True)
        rounds.append({s: results[s] for s in settings})
    return rounds


def median_result(runs: list[dict]) -> dict:
    """Each figure's median over the rounds (element-wise for a list of figures)."""
    out = {}
    for key, first in runs[0].items():
        if isinstance(first, list):
            out[key] = [statistics.median(col) for col in zip(*(r[key] for r in runs), strict=True)]
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.only:  # a child: one setting, one JSON line
        result = ray_loop(args) if args.only == "ray" else bare_loop(args, args.only)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    print_header("sevlm training-step benchmark: released recipe vs ours vs ours through Ray")
    settings = args.settings.split(",")
    with tempfile.TemporaryDirectory(prefix="sevlm-bench-cache-") as temp:
        args.cache_root = args.cache_root or Path(temp)
        args.cache = build_cache(args)
        rounds = run_rounds(args, settings)
    results = {s: median_result([r[s] for r in rounds]) for s in settings}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"settings: {device}, {args.threads} threads; preset {args.preset} "
        f"(frozen encoder), batch {args.batch} images ({2 * args.batch} sequences), "
        f"grad_accum {args.grad_accum}, {args.steps} timed steps after {args.warmup}; "
        f"ours: precision {args.precision}"
        + (f"; median of {args.rounds} rounds" if args.rounds > 1 else "")
        + (f"; compiled: torch.compile backend {args.compile}" if "compiled" in results else "")
    )
    memory = "peak allocated MiB" if torch.cuda.is_available() else "peak RSS MiB"
    print(f"| setting | images/s | {memory} | warm-up s ({args.warmup} steps) |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['images_per_s']:.1f} | {r['peak_mib']:.0f} | {r['warmup_s']:.1f} |")
    phased = {name: r["phases_ms"] for name, r in results.items() if "phases_ms" in r}
    if phased:
        print(f"phases, ms per step, each waited for ({args.phases} steps after the timed ones):")
        print("| setting | prepare | copy to device | optimizer step | timed step, overlapped |")
        print("|---|---:|---:|---:|---:|")
        for name, (prepare, copy, step) in phased.items():
            timed = 1000 * args.batch / results[name]["images_per_s"]
            print(f"| {name} | {prepare:.1f} | {copy:.1f} | {step:.1f} | {timed:.1f} |")
    for top, bottom, line in RATIOS:
        if top in results and bottom in results:
            ratios = [r[top]["images_per_s"] / r[bottom]["images_per_s"] for r in rounds]
            each = f" (rounds: {', '.join(f'{x:.3f}' for x in ratios)})" if len(rounds) > 1 else ""
            print(line.format(statistics.median(ratios)) + each)  # of each round's own ratio
    return 0


if __name__ == "__main__":
    sys.exit(main())
