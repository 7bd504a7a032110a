"""Loss pieces that need care: masked pooling and the ternary contrastive loss.

The contrastive loss scores each anchor (image, emotion) against every valid explanation in
the *global* batch: its own (the positive), the other-emotion explanation of the same image
(the hard negative) and those of other images. With several workers, explanation features
are gathered from all of them with gradients (as open_clip does), so a temperature means the
same on one GPU and on eight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [N, T, C]`` over positions where ``mask [N, T]`` holds (zeros if none)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """``x`` from every worker, concatenated, with gradients flowing back to each; and the
    offset of this worker's rows. Every worker must pass the same shape (training drops the
    last partial batch, and Ray splits the data evenly)."""
    if not _distributed():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def contrastive_loss(
    scorer: Callable[[Tensor, Tensor, Tensor], Tensor],
    image: Tensor,
    emotion: Tensor,
    explanation: Tensor,
    valid: Tensor,
    temperature: float,
    group_size: int | None = None,
) -> Tensor:
    """Cross-entropy of each valid anchor's own explanation among the valid candidates.

    ``image``, ``emotion``, ``explanation`` are ``[N, C]`` per sequence (sequences of one image
    adjacent); ``valid [N]`` marks sequences of images with two distinct emotions. Candidates
    are every valid explanation of the global batch; with ``group_size`` (evaluation), only
    those of the anchor's own image, gathered from nowhere.
    """
    global_batch = group_size is None
    if global_batch:
        candidates, offset = gather_with_grad(explanation)
        candidate_valid, _ = gather_with_grad(valid.to(torch.uint8))
    else:
        candidates, offset, candidate_valid = explanation, 0, valid
    anchors = valid.nonzero().squeeze(1)
    spread = global_batch and _distributed()
    if spread:
        # Every rank joins this collective, paired images or not: all ranks must run the same
        # collectives in the same order, or gloo aborts and NCCL hangs.
        total = torch.tensor(float(len(anchors)), device=valid.device)
        dist.all_reduce(total)
    if len(anchors) == 0:
        # No pair here: a zero that still runs the scorer, so DDP sees all its parameters used.
        return scorer(image[:1], emotion[:1], candidates[:1]).sum() * 0.0
    allowed = candidate_valid.bool()[None, :].expand(len(anchors), -1)
    if group_size is not None:
        groups = torch.arange(len(candidates), device=valid.device) // group_size
        allowed = allowed & (groups[None, :] == (anchors // group_size)[:, None])
    scores = scorer(image[anchors], emotion[anchors], candidates)
    if not spread:
        return scores_to_loss(scores, anchors + offset, allowed, temperature)
    # Each worker holds some of the global batch's anchors, and DDP averages gradients over
    # workers: dividing this worker's sum by the global anchor count, times the world size,
    # makes that average the mean over all anchors, however unevenly pairs are spread.
    summed = scores_to_loss(scores, anchors + offset, allowed, temperature, reduction="sum")
    return summed * dist.get_world_size() / total


def scores_to_loss(
    scores: Tensor, targets: Tensor, allowed: Tensor, temperature: float, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy of ``scores [A, K] / temperature`` over the ``allowed`` candidates
    (``[K]``, the same for every anchor, or ``[A, K]``)."""
    mask = allowed if allowed.dim() == 2 else allowed[None, :]
    logits = (scores.float() / temperature).masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, targets, reduction=reduction)
