"""The contrastive loss on two gloo workers equals one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sevlm.losses import contrastive_loss
from sevlm.model import ContrastiveScorer
from sevlm.training import from_rank_0, mean_over_workers

N, C = 8, 6  # sequences per worker, feature width
UNEVEN = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
"""Worker 0 has one paired image, worker 1 three: an uneven spread."""
NONE_ON_RANK_0 = torch.tensor([0] * 8 + [1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
"""Worker 0 has no paired image at all: it must still join every collective."""


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2 * N, C, generator=g) for _ in range(3))


def _scorer() -> ContrastiveScorer:
    torch.manual_seed(1)
    return ContrastiveScorer(C)


def _worker(rank: int, init: str, out: str, pattern: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        scorer = _scorer()
        image, emotion, explanation = (x[rank * N : (rank + 1) * N].clone() for x in _inputs())
        explanation.requires_grad_(True)
        valid = pattern[rank * N : (rank + 1) * N]
        loss = contrastive_loss(scorer, image, emotion, explanation, valid, temperature=0.5)
        loss.backward()
        for p in scorer.parameters():  # what DDP does: average the gradients
            dist.all_reduce(p.grad)
            p.grad /= 2
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.save(
            {"loss": mean_loss / 2, "grads": [p.grad for p in scorer.parameters()],
             "feature_grad": explanation.grad},
            f"{out}.{rank}",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("pattern", [UNEVEN, NONE_ON_RANK_0], ids=["uneven", "none-on-rank-0"])
def test_two_workers_equal_one_process(tmp_path: Path, pattern: torch.Tensor) -> None:
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(f"file://{tmp_path}/init", out, pattern), nprocs=2, join=True)
    scorer = _scorer()
    image, emotion, explanation = _inputs()
    explanation.requires_grad_(True)
    loss = contrastive_loss(scorer, image, emotion, explanation, pattern, temperature=0.5)
    loss.backward()
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    torch.testing.assert_close(results[0]["loss"], loss.detach())
    for got, expected in zip(results[0]["grads"], scorer.parameters(), strict=True):
        torch.testing.assert_close(got, expected.grad, rtol=1e-5, atol=1e-7)
    # each worker's feature gradient is the world size times its slice of one process's:
    # DDP's averaging of the parameters downstream takes that factor out again
    for rank in range(2):
        expected = explanation.grad[rank * N : (rank + 1) * N] * 2
        torch.testing.assert_close(results[rank]["feature_grad"], expected, rtol=1e-5, atol=1e-7)


def _mean_worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        metrics = {
            "train/lm_loss": torch.tensor(2.0 + rank),
            "train/cl_loss": torch.tensor(4.0 * rank),
            "train/grad_norm": torch.tensor(7.0),
            "train/lr": 0.1,
        }
        said = from_rank_0("released" if rank == 0 else "undecided")
        torch.save({**mean_over_workers(metrics), "said": said}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_logged_losses_are_the_mean_over_workers(tmp_path: Path) -> None:
    """Rank 0 logs for all: its losses alone are its shard's (a contrastive term of 0 where it
    holds no pair); the workers' mean is the batch's. And decisions the workers read from
    storage each on its own are rank 0's on all."""
    out = str(tmp_path / "result")
    mp.spawn(_mean_worker, args=(f"file://{tmp_path}/init", out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert float(got["train/lm_loss"]) == 2.5 and float(got["train/cl_loss"]) == 2.0
        assert float(got["train/grad_norm"]) == 7.0 and got["train/lr"] == 0.1  # not losses
        assert got["said"] == "released"  # a rung's verdict: rank 0's, on every worker
    one = {"train/lm_loss": torch.tensor(3.0)}
    assert mean_over_workers(one) is one  # no process group: nothing to average
