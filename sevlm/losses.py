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


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """``x`` from every worker, concatenated, with gradients flowing back to each; and the
    offset of this worker's rows. Every worker must pass the same shape."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
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
) -> Tensor:
    """Cross-entropy of each valid anchor's own explanation among all valid candidates.

    ``image``, ``emotion``, ``explanation`` are ``[N, C]`` per sequence (sequences of one image
    adjacent); ``valid [N]`` marks sequences of images with two distinct emotions.
    """
    candidates, offset = gather_with_grad(explanation)
    candidate_valid, _ = gather_with_grad(valid.to(torch.uint8))
    if not bool(valid.any()):
        # No pair here: a zero that still runs the scorer, so DDP sees all its parameters used.
        return scorer(image[:1], emotion[:1], candidates[:1]).sum() * 0.0
    anchors = valid.nonzero().squeeze(1)
    scores = scorer(image[anchors], emotion[anchors], candidates)
    return scores_to_loss(scores, anchors + offset, candidate_valid.bool(), temperature)


def scores_to_loss(
    scores: Tensor, targets: Tensor, candidate_valid: Tensor, temperature: float
) -> Tensor:
    """Mean cross-entropy of ``scores [A, K] / temperature`` with invalid candidates removed."""
    logits = (scores.float() / temperature).masked_fill(~candidate_valid[None, :], float("-inf"))
    return F.cross_entropy(logits, targets)
