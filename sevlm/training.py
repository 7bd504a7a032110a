"""Training without Ray: the config, the optimizer and schedule, one step, the frozen
encoder's feature cache, and evaluation.

The Ray Train loop (``sevlm_train``) and a plain single-process run call the same
:class:`Stepper` and :func:`evaluate_shard`, so a benchmark of one measures the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sevlm.artemis import Painting
from sevlm.config import TrainConfig
from sevlm.examples import ExampleConfig, iter_batches
from sevlm.feature_cache import FeatureCache
from sevlm.generate import Decoder
from sevlm.metrics import bleu, emotion_accuracy
from sevlm.model import SEVLM

MODEL_INPUTS = ("pixel_values", "input_ids", "labels", "segment_ids", "vad", "vad_mask", "has_pair")
LOSS_TERMS = ("loss", "lm_loss", "vad_loss", "cl_loss")
IMAGE_FEATURES = "image_features"
"""A frozen encoder's cached output (:mod:`sevlm.feature_cache`), in place of the pixels."""


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None: full fp32)."""
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "auto":  # bf16 natively from Ampere (sm80) on; emulated before it is slow
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def compile_backend(setting: str, device: torch.device) -> str | None:
    """The ``torch.compile`` backend of a compile setting on a device (None: eager). ``auto``
    compiles on CUDA only, where paper-preset steps measured 1.3x to 1.6x faster compiled
    (bench/RESULTS.md); on CPU the first compile costs more than short runs gain."""
    if setting == "auto":
        return "inductor" if device.type == "cuda" else None
    return None if setting == "off" else setting


def parameter_groups(model: SEVLM, config: TrainConfig) -> list[dict[str, Any]]:
    """The released recipe's groups: the VAD encoder at ``lr_vad``, everything else at ``lr``."""
    vad, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (vad if name.startswith("vad_encoder.") else rest).append(p)
    groups = [{"params": rest, "lr": config.lr, "weight_decay": config.weight_decay}]
    if vad:
        groups.append({"params": vad, "lr": config.lr_vad, "weight_decay": config.weight_decay})
    return groups


def linear_schedule(config: TrainConfig):
    """Multiplier of the learning rate at each step: warm-up, then linear decay to zero."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.max_steps - config.warmup_steps)
        return max(0.0, 1.0 - (step - config.warmup_steps) / span)

    return factor


class Stepper:
    """One optimizer step: autocast forward, (scaled) backward over ``grad_accum``
    micro-batches, clip, step, schedule.

    ``model`` may be wrapped (DDP); ``module`` is the bare model, for parameter groups. With
    ``config.compile`` the forward runs through ``torch.compile``.

    Each micro-batch's loss is its own mean, weighted ``1 / grad_accum``: the same gradient as
    the whole batch when the parts hold as many tokens, close to it otherwise. The contrastive
    negatives of a micro-batch come from that micro-batch (across workers).
    """

    def __init__(self, model: nn.Module, module: SEVLM, config: TrainConfig, device: torch.device):
        backend = compile_backend(config.compile, device)
        self.model = model if backend is None else torch.compile(model, backend=backend)
        self.config, self.device = config, device
        self.dtype = autocast_dtype(config.precision, device)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(module, config), fused=device.type == "cuda"
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(config))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(batch, self.config.grad_accum)
        terms: dict[str, torch.Tensor] = {}
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            # DDP all-reduces gradients on the last micro-batch's backward only
            with nullcontext() if last else getattr(self.model, "no_sync", nullcontext)():
                with self.autocast():
                    out = self.model(part)
                self.scaler.scale(out.loss / len(parts)).backward()
            for k in LOSS_TERMS:
                if getattr(out, k) is not None:
                    terms[k] = terms.get(k, 0.0) + getattr(out, k).detach() / len(parts)
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.config.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]  # this step's: stepping the schedule moves it on
        self.scheduler.step()
        # Tensors, not floats: reading them waits for the GPU, so only do that when logging.
        metrics = {f"train/{k}": v for k, v in terms.items()}
        metrics["train/grad_norm"] = grad_norm.detach()
        metrics["train/lr"] = lr
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def mean_over_workers(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with the loss terms of :meth:`Stepper.step` averaged over every worker: a
    collective, so every worker calls it at the same steps. One worker's terms are of its own
    shard only, and its contrastive term is scaled so that the workers' mean is the batch's.
    """
    names = [f"train/{k}" for k in LOSS_TERMS if f"train/{k}" in metrics]
    if not names or not dist.is_initialized() or dist.get_world_size() == 1:
        return metrics
    sums = torch.stack([torch.as_tensor(metrics[k]).float() for k in names])
    dist.all_reduce(sums)  # a sum: gloo has no average
    return {**metrics, **dict(zip(names, sums / dist.get_world_size(), strict=True))}


def from_rank_0(value: Any) -> Any:
    """Rank 0's ``value`` on every worker: for a decision each worker took on its own from
    shared storage, which one of them may have read stale or not at all, and which they must
    act on alike (the wrong one waits in a collective the others never join)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_every_worker(value: Any) -> list[Any]:
    """Every worker's ``value``, in rank order, on every worker (a collective)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def every_worker(flag: bool, group: dist.ProcessGroup | None = None) -> bool:
    """Whether ``flag`` holds on every worker: a collective, so every worker calls it at the
    same points. ``group``: a gloo group, so a CPU flag needs no GPU synchronisation."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def micro_batches(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` split along its first dimension into ``parts`` batches, none empty."""
    size = len(next(iter(batch.values())))
    if parts > size:
        raise ValueError(f"cannot split a batch of {size} into {parts} micro-batches")
    if parts == 1:
        return [batch]
    split = {k: torch.tensor_split(v, parts) for k, v in batch.items()}
    return [{k: v[i] for k, v in split.items()} for i in range(parts)]


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's inputs of a numpy batch, as tensors on ``device``.

    A batch read from a frozen encoder's feature cache carries ``image_features`` (fp16,
    before the projection), which then replace ``pixel_values``. On CUDA the arrays go through
    pinned memory: a copy from pageable memory waits for the GPU's queued work, a pinned one
    does not, so the next step's kernels are queued while the GPU still runs this one.
    """
    names = MODEL_INPUTS
    if IMAGE_FEATURES in batch:
        names = (IMAGE_FEATURES, *(k for k in MODEL_INPUTS if k != "pixel_values"))
    pin = device.type == "cuda"
    tensors = {k: torch.as_tensor(batch[k]) for k in names}
    return {
        k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in tensors.items()
    }


def image_memory(model: SEVLM, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The cross-attention memory of a batch: projected cached features, or the encoder's
    output on the pixels."""
    if IMAGE_FEATURES in tensors:
        features = tensors[IMAGE_FEATURES].to(model.wte.weight.dtype)
        return model.image_encoder.proj(features)
    return model.encode_images(tensors["pixel_values"])


# ---------------------------------------------------------------------------------------------
# Evaluation, sharded across workers and reduced


def eval_shard(
    paintings: list[Painting], rank: int, world: int, limit: int | None
) -> list[Painting]:
    """This worker's part of the evaluation images: every image exactly once across workers."""
    ordered = sorted(paintings, key=lambda p: p.key)[:limit]
    return ordered[rank::world]


@torch.no_grad()
def evaluate_shard(
    model: SEVLM,
    paintings: list[Painting],
    example_config: ExampleConfig,
    decoder: Decoder,
    device: torch.device,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 25,
    autocast=nullcontext,
    features: FeatureCache | None = None,
) -> dict[str, Any]:
    """Loss sums and generations for a shard of images: partial results for :func:`reduce_eval`.

    With ``features`` (a frozen encoder's cache) the images are not decoded nor encoded.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n_images, predictions = 0, {}
    for batch in iter_batches(paintings, example_config, batch_size, epoch=0, features=features):
        tensors = to_device(batch, device)
        with autocast():
            memory = image_memory(model, tensors)
            out = model({**tensors, "image_tokens": memory})
        b = len(batch["key"])
        n_images += b
        for term, count in out.counts.items():  # a removed head has no count, no loss
            sums[term] = sums.get(term, 0.0) + float(getattr(out, term)) * count
            counts[term] = counts.get(term, 0) + count
        said = decoder.explain_memory(memory.float(), max_new_tokens)
        for key, one in zip(batch["key"], said, strict=True):
            predictions[str(key)] = (one.emotion, one.explanation)
    model.train(was_training)
    weights = {"vad_loss": model.config.w_vad, "cl_loss": model.config.w_cl}
    return {
        "sums": sums, "counts": counts, "weights": weights,
        "n_images": n_images, "predictions": predictions,
    }  # fmt: skip


def reduce_eval(parts: Iterable[dict[str, Any]], paintings: list[Painting]) -> dict[str, float]:
    """Validation figures from every worker's partial results (or one process's)."""
    parts = list(parts)
    n = sum(p["n_images"] for p in parts)
    predictions = {k: v for p in parts for k, v in p["predictions"].items()}
    by_key = {p.key: p for p in paintings}
    annotations = {k: [a.emotion for a in by_key[k].annotations] for k in predictions}
    references = {k: [a.text for a in by_key[k].annotations if a.text] for k in predictions}
    metrics = {}
    for term in sorted({t for p in parts for t in p["sums"]}):  # exact: sums over counts
        total = sum(p["counts"].get(term, 0) for p in parts)
        metrics[f"val/{term}"] = sum(p["sums"].get(term, 0.0) for p in parts) / max(total, 1)
    weights = parts[0]["weights"] if parts else {}
    metrics["val/loss"] = metrics.get("val/lm_loss", 0.0) + sum(
        w * metrics[f"val/{t}"] for t, w in weights.items() if f"val/{t}" in metrics
    )
    accuracy = emotion_accuracy({k: v[0] for k, v in predictions.items()}, annotations)
    scores = bleu({k: v[1] for k, v in predictions.items()}, references)
    metrics.update(
        {
            "val/emotion_accuracy": accuracy["emotion_accuracy"] or 0.0,
            "val/bleu1": scores[0],
            "val/bleu4": scores[3],
            "val/images": float(n),
        }
    )
    return metrics
