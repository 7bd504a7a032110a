"""The Ray Train loop: what every worker of a training run (and of every search trial) runs.

Each worker reads its share of the training images a pass at a time (a pass of one or more
epochs, see :class:`sevlm.pipeline.TrainStream`), draws each row's annotation pair for its
epoch, and steps the model with :class:`sevlm.training.Stepper`.
At each validation the workers evaluate disjoint slices of the validation images, gather
them, and rank 0 writes a checkpoint (model, optimizer, scheduler, scaler, step, each
worker's data position and RNG states, the images the reads dropped so far) that Ray persists
and reports with the metrics. A restarted worker group resumes from it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from sevlm.config import ModelConfig, TrainConfig
from sevlm.examples import ExampleConfig, encode_batch
from sevlm.feature_cache import FeatureCache, key_digest
from sevlm.frozen_encoder import cache_key, encoder_name
from sevlm.generate import Decoder
from sevlm.lexicon import VADLexicon, read_lexicon
from sevlm.model import SEVLM
from sevlm.pipeline import TrainStream, report_drops
from sevlm.tokenizer import load_tokenizer
from sevlm.tracking import MetricLogger
from sevlm.training import (
    Stepper,
    eval_shard,
    evaluate_shard,
    every_worker,
    from_every_worker,
    from_rank_0,
    mean_over_workers,
    reduce_eval,
    to_device,
)
from sevlm.weights import WEIGHTS_FILE, build_model, load_weights, save_weights

if TYPE_CHECKING:  # built by a sweep's driver; ray.tune stays unimported otherwise
    from sevlm_train.halving import RungGate

FAIL_AT_STEP = "SEVLM_FAIL_AT_STEP"
"""Testing hook: rank 0 raises once when it reaches this step (see :class:`FaultHook`)."""
FAIL_MARKER = "SEVLM_FAIL_MARKER"
"""Testing hook: the file that records the fault was injected, so it happens once."""
TRACE_DIR = "SEVLM_TRACE_DIR"
"""Testing hook: each worker appends the keys of the images it trains on to a file here,
and writes the id of its node."""


@dataclass
class TrainState:
    """Where training is: saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    """The epoch of the last row trained on."""
    stream_pass: int = 0
    """Passes over the training split finished (see :class:`sevlm.pipeline.TrainStream`)."""
    batch_in_pass: int = 0
    """Steps of the current pass trained."""
    next_rows: list[int] = field(default_factory=list)
    """Per worker, in rank order: the row of its share of the current pass after the last it
    trained (its ``share_row`` + 1), where it reads on when resumed (:func:`_resume_row`)."""
    best: float | None = None
    stale: int = 0
    stopped: bool = False


class FaultHook:
    """Raises once at a chosen step, to test recovery (``SEVLM_FAIL_AT_STEP``)."""

    def __init__(self, rank: int) -> None:
        step = os.environ.get(FAIL_AT_STEP)
        self.step = int(step) if step and rank == 0 else None
        self.marker = Path(os.environ.get(FAIL_MARKER, "sevlm-fault-injected"))

    def check(self, step: int) -> None:
        if self.step == step and not self.marker.exists():
            self.marker.write_text(f"failed at step {step}\n")
            raise RuntimeError(f"injected fault at step {step} ({FAIL_AT_STEP})")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train_cfg = TrainConfig(**config["train"])
    model_cfg = ModelConfig.from_dict(config["model"])
    example = ExampleConfig(**config["example"])
    stream: TrainStream = config["stream"]
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    torch.manual_seed(train_cfg.seed)
    random.seed(train_cfg.seed + rank)

    tokenizer = load_tokenizer(model_cfg.tokenizer)
    lexicon = read_lexicon(example.lexicon) if example.lexicon else VADLexicon({})
    device = ray.train.torch.get_device()
    state, saved = TrainState(), None
    checkpoint = ray.train.get_checkpoint()
    # A restart takes every weight from the checkpoint: no need to fetch pretrained ones.
    model = build_model(model_cfg.without_pretrained() if checkpoint else model_cfg, tokenizer)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            load_weights(model, Path(folder) / WEIGHTS_FILE)
            saved = torch.load(Path(folder) / "trainer.pt", weights_only=True)
        state = TrainState(**saved["state"])
        if rank == 0:  # this run's counts start from what its reads before had dropped
            report_drops(stream.counter, saved.get("dropped", {}))
        rngs = saved["rng"] if isinstance(saved["rng"], list) else [saved["rng"]]  # older: rank 0's
        _set_rng(rngs[rank] if len(rngs) == world else rngs[0])
    features = open_feature_cache(model, model_cfg, example, config.get("feature_cache"))
    wrapped = ray.train.torch.prepare_model(model)
    stepper = Stepper(wrapped, model, train_cfg, device)
    if saved is not None:
        stepper.load_state_dict(saved["stepper"])
        _say(f"[sevlm] resumed at step {state.step} (epoch {state.epoch})")

    val = config["val"]  # as the driver checked it: its unreadable images left out
    val_shard = eval_shard(val, rank, world, train_cfg.val_max_images)
    decoder = Decoder(model, tokenizer, lexicon)
    logger = MetricLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    fault = FaultHook(rank)
    trace = _trace_file(rank)
    per_worker = stream.per_worker
    flags = dist.new_group(backend="gloo") if world > 1 else None  # see _pass_batches
    gate = config.get("rung_gate")
    passed = from_rank_0(gate.passed()) if gate else 0

    def validate(next_row: int) -> None:
        nonlocal passed
        part = evaluate_shard(
            model, val_shard, example, decoder, device, batch_size=per_worker,
            max_new_tokens=train_cfg.max_new_tokens, autocast=stepper.autocast,
            features=features,
        )  # fmt: skip
        metrics = reduce_eval(from_every_worker(part), val)
        if train_cfg.select_metric not in metrics:
            raise ValueError(
                f"train.select_metric {train_cfg.select_metric!r} is not reported; "
                f"choose one of {', '.join(sorted(metrics))}"
            )
        score = metrics[train_cfg.select_metric]
        if train_cfg.better(score, state.best):
            state.best, state.stale = score, 0
        else:
            state.stale += 1
        state.stopped = 0 < train_cfg.early_stop <= state.stale
        final = state.stopped or state.step >= train_cfg.max_steps  # the run's last report
        metrics.update(
            {"step": state.step, "epoch": state.epoch, "best": state.best, "final": float(final)}
        )
        if logger is not None:  # before the checkpoint: a failure in between replays this step
            logger.log({k: v for k, v in metrics.items() if k.startswith("val/")}, state.step)
            _say(_line("val", state.step, metrics))
        _report(metrics, model, stepper, state, rank, stream, next_row)
        if gate and not final and gate.reaches(passed, state.step):
            _hold_at_rung(gate, passed, state.step, rank, metrics)
            passed += 1

    since, images_since = time.perf_counter(), 0
    while state.step < train_cfg.max_steps and not state.stopped:
        next_row = _resume_row(state, rank, world, per_worker)
        for batch in _pass_batches(stream, state.stream_pass, rank, next_row, flags):
            fault.check(state.step + 1)
            epochs = batch["epoch"]
            state.epoch = int(np.max(epochs))
            tensors = to_device(encode_batch(batch, example, epochs), device)
            if trace is not None:
                with open(trace, "a") as f:
                    rows = zip(epochs, batch["key"], strict=True)
                    f.write("\t".join(f"{e}:{k}" for e, k in rows) + "\n")
            metrics = stepper.step(tensors)
            state.step += 1
            state.batch_in_pass += 1
            next_row = int(batch["share_row"][-1]) + 1
            images_since += per_worker
            if state.step % train_cfg.log_every == 0:
                metrics = mean_over_workers(metrics)  # every worker: an all-reduce
                if logger is not None:
                    now = time.perf_counter()
                    metrics = {k: float(v) for k, v in metrics.items()}
                    metrics["train/images_per_s"] = images_since / max(now - since, 1e-9) * world
                    since, images_since = now, 0
                    logger.log(metrics, state.step)
                    _say(_line("train", state.step, metrics))
            if state.step % train_cfg.val_every == 0 or state.step == train_cfg.max_steps:
                validate(next_row)
            if state.step >= train_cfg.max_steps or state.stopped:
                break
        else:
            _end_pass(stream, state, rank)
    if logger is not None and logger.dropped:
        _say(f"warning: {logger.dropped} metrics were not logged to MLflow ({logger.failures} "
             "calls failed; logging paused after each): the run's curves have gaps")  # fmt: skip


def _resume_row(state: TrainState, rank: int, world: int, per_worker: int) -> int:
    """The row of its share of the pass a worker reads on from: its own count, or where the
    checkpoint has none of this many workers, the steps trained times its batch (the same
    while no image of the pass failed to read)."""
    if len(state.next_rows) == world:
        return state.next_rows[rank]
    return state.batch_in_pass * per_worker


def _pass_batches(
    stream: TrainStream, stream_pass: int, rank: int, start: int, flags: dist.ProcessGroup | None
) -> Iterator[dict]:
    """This worker's batches of a pass from row ``start`` of its share on, while every worker
    has one.

    The workers' shares of a pass are equal; one runs short only where images failed to read
    since the driver checked them (dropped, counted in ``pipeline/*``). The others then end
    the pass with it rather than step alone into collectives it never joins. The flag goes
    through a gloo group (``flags``): a CPU all-reduce, no GPU synchronisation per step."""
    batches = stream.shard(stream_pass, rank, start).iter_batches(
        batch_size=stream.per_worker, batch_format="numpy", drop_last=True
    )
    for batch in itertools.chain(batches, [None]):
        if not every_worker(batch is not None, flags):
            return
        yield batch


def _end_pass(stream: TrainStream, state: TrainState, rank: int) -> None:
    """Count a pass as read; one that gave fewer batches than it holds lost images."""
    if state.batch_in_pass == 0:
        raise RuntimeError(
            f"pass {state.stream_pass} of the training split gave no batch: its images failed "
            "to read (dropped; the run's pipeline/* metrics count them by reason)"
        )
    short = stream.steps_per_pass - state.batch_in_pass
    if short > 0 and rank == 0:
        _say(f"warning: pass {state.stream_pass} ended {short} steps early: images failed to "
             "read since the data check (pipeline/* counts them)")  # fmt: skip
    state.stream_pass += 1
    state.batch_in_pass = 0
    state.next_rows = []


def open_feature_cache(
    model: SEVLM, model_cfg: ModelConfig, example: ExampleConfig, spec: dict[str, str] | None
) -> FeatureCache | None:
    """The frozen encoder's feature cache the driver wrote (``spec``: its root and data
    fingerprint), opened with the key of this worker's own encoder: features computed by
    any other encoder (another seed, other weights) are never read."""
    if not spec:
        return None
    key = cache_key(model.image_encoder, example, encoder_name(model_cfg), spec["data"])
    cache = FeatureCache.open(spec["root"], key)
    if cache is None:
        raise RuntimeError(
            f"no feature cache for this worker's image encoder under {spec['root']} (folder "
            f"{key_digest(key)}). The driver writes it before training; a worker on another "
            "node needs the cache root on storage every node sees. Set train.feature_cache="
            "false to encode images in the workers instead."
        )
    return cache


def _report(
    metrics: dict, model, stepper: Stepper, state: TrainState, rank: int, stream: TrainStream,
    next_row: int,
) -> None:  # fmt: skip
    """Every worker reports (a barrier); rank 0 attaches the checkpoint, written atomically:
    into a fresh folder that Ray copies to storage before it counts as reported. It holds
    every worker's ``next_row`` and RNG states, and the images the reads have dropped so far,
    which a resumed run may not meet again."""
    where = from_every_worker((next_row, _get_rng()))
    state.next_rows = [row for row, _ in where]
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="sevlm-ckpt-") as folder:
        save_weights(model, Path(folder) / WEIGHTS_FILE)
        torch.save(
            {
                "stepper": stepper.state_dict(),
                "state": dataclasses.asdict(state),
                "rng": [rng for _, rng in where],
                "dropped": ray.get(stream.counter.get_keys.remote()),
            },
            Path(folder) / "trainer.pt",
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _hold_at_rung(
    gate: RungGate, rung: int, step: int, rank: int, metrics: dict[str, float]
) -> None:
    """Wait at a rung of successive halving until the sweep keeps this trial: Tune ends the
    workers meanwhile if it pauses or stops the trial. A trial that waited in its slot and
    was dropped reports ``metrics`` again, which Tune answers with a stop."""
    trial = gate.trial_id
    if rank == 0:
        _say(f"[sevlm] trial {trial} at the step-{step} rung: waiting for the sweep's verdict")
    verdict = from_rank_0(gate.wait(rung))  # each polls the file: no collective held for long
    if verdict == "released":
        if rank == 0:
            _say(f"[sevlm] trial {trial} dropped at step {step}: reporting for Tune to stop it")
        ray.train.report(metrics)
        time.sleep(gate.timeout_s)  # Tune ends the workers meanwhile
        verdict = "dropped"
    if rank == 0 and verdict == "kept":
        _say(f"[sevlm] trial {trial} kept at step {step}: training on")
    elif rank == 0:
        _say(f"[sevlm] warning: trial {trial} is {verdict} at step {step} but was not paused or "
             f"stopped in {gate.timeout_s:.0f} s; training on")  # fmt: skip


def _get_rng() -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _trace_file(rank: int) -> Path | None:
    """The worker's trace file (and beside it, ``rank<R>.node``: the Ray node it runs on)."""
    folder = os.environ.get(TRACE_DIR)
    if not folder:
        return None
    (Path(folder) / f"rank{rank}.node").write_text(ray.get_runtime_context().get_node_id())
    return Path(folder) / f"rank{rank}.tsv"


def _say(line: str) -> None:
    """One progress line to the worker's own stderr, which Ray forwards to the driver. Not
    ``print`` to ``sys.stderr``: Ray Train replaces ``print`` in its workers with one that both
    writes and logs the line, and the driver shows each line twice."""
    print(line, file=sys.__stderr__, flush=True)


def _line(kind: str, step: int, metrics: dict) -> str:
    shown = ", ".join(
        f"{k.split('/')[-1]} {v:.4g}" for k, v in metrics.items()
        if k.startswith(f"{kind}/") and isinstance(v, float)
    )  # fmt: skip
    return f"[sevlm] {kind} step {step}: {shown}"
