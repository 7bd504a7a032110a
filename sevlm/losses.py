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
    group_size: int | None = None,
) -> Tensor:
    """Cross-entropy of each valid anchor's own explanation among the valid candidates.

    ``image``, ``emotion``, ``explanation`` are ``[N, C]`` per sequence (sequences of one image
    adjacent); ``valid [N]`` marks sequences of images with two distinct emotions. Candidates
    are every valid explanation of the global batch; with ``group_size`` (evaluation), only
    those of the anchor's own image, gathered from nowhere.
    """
    if group_size is None:
        candidates, offset = gather_with_grad(explanation)
        candidate_valid, _ = gather_with_grad(valid.to(torch.uint8))
    else:
        candidates, offset, candidate_valid = explanation, 0, valid
    if not bool(valid.any()):
        # No pair here: a zero that still runs the scorer, so DDP sees all its parameters used.
        return scorer(image[:1], emotion[:1], candidates[:1]).sum() * 0.0
    anchors = valid.nonzero().squeeze(1)
    allowed = candidate_valid.bool()[None, :].expand(len(anchors), -1)
    if group_size is not None:
        groups = torch.arange(len(candidates), device=valid.device) // group_size
        allowed = allowed & (groups[None, :] == (anchors // group_size)[:, None])
    scores = scorer(image[anchors], emotion[anchors], candidates)
    return scores_to_loss(scores, anchors + offset, allowed, temperature)


def scores_to_loss(scores: Tensor, targets: Tensor, allowed: Tensor, temperature: float) -> Tensor:
    """Mean cross-entropy of ``scores [A, K] / temperature`` over the ``allowed`` candidates
    (``[K]``, the same for every anchor, or ``[A, K]``)."""
    mask = allowed if allowed.dim() == 2 else allowed[None, :]
    logits = (scores.float() / temperature).masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, targets)
