"""Benchmark: explanations/s of KV-cached decoding vs uncached decoding (the whole prefix re-run
at every step, as the released code does), side by side in one run, and of beam search.

Cached greedy decoding runs twice: with caches that grow at every step, and with
``graph=True`` (fixed-shape steps, each one replay of a CUDA graph on CUDA, eager elsewhere).
Two uncached settings: as released (GPT-2's LM head scores every position of the prefix at
every step, and the last one is read), and a kinder one that scores the last position only,
so the share of the cache itself is visible. Neither re-runs the image encoder at each step,
which the released code also does.

    python bench/generate.py [--preset tiny] [--batch 32] [--new-tokens 25] [--repeats 3]
                             [--phases]

``--phases`` then splits a KV-cached greedy step into the model's forward pass (decoder and LM
head) and the host's part: reading the new tokens back and building the next step's inputs,
of which the VAD lookups. Each phase is waited for (on CUDA, synchronized), so the split says
how much of a step a faster model call (a CUDA graph, say) could save.

The model is randomly initialised (generation costs the same with trained weights) and never
stops early: ``<eos>``'s logit is set to -inf, so every text is exactly ``--new-tokens`` long
in every setting. Before any figure is printed, cached and uncached
decoding must give the same tokens. The ratio is the target of issue 7: cached at least 5x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager

import torch
from machine import print_header

from sevlm.config import ModelConfig
from sevlm.generate import Decoder, _Texts
from sevlm.lexicon import VADLexicon
from sevlm.tokenizer import load_tokenizer
from sevlm.weights import build_model


def sync() -> None:
    """Wait for the GPU's queued work, if there is a GPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> tuple[float, object]:
    """The median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    sync()  # the warm-up's queued GPU work stays out of the first timed call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


@contextmanager
def timing(owner: type, name: str, totals: dict[str, float]):
    """Add the wall time of every call of ``owner.name`` to ``totals[name]``, waited for."""
    method = getattr(owner, name)

    def timed_method(*args, **kwargs):
        sync()
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            sync()
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

    setattr(owner, name, timed_method)
    try:
        yield
    finally:
        setattr(owner, name, method)


def phase_times(
    decoder: Decoder, memory: torch.Tensor, new_tokens: int, graph: bool
) -> dict[str, float]:
    """Mean ms per step of KV-cached greedy decoding spent in each phase, each waited for,
    after one untimed call (a capture before may have emptied the allocator's cache)."""
    decoder.generate(memory, new_tokens, use_cache=True, graph=graph)
    totals: dict[str, float] = {}
    with (
        timing(_Texts, "logits", totals),
        timing(_Texts, "append", totals),
        timing(Decoder, "_token_vad", totals),
    ):
        sync()
        started = time.perf_counter()
        decoder.generate(memory, new_tokens, use_cache=True, graph=graph)
        sync()
        totals["step"] = time.perf_counter() - started
    return {name: 1000 * seconds / new_tokens for name, seconds in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=25)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--phases", action="store_true", help="split a cached greedy step into its phases"
    )
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.batch < 1 or args.repeats < 1:
        parser.error("--new-tokens, --batch and --repeats must be at least 1")
    print_header("sevlm generation benchmark: KV-cached vs uncached decoding")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    config = ModelConfig.preset(args.preset).without_pretrained()
    model = build_model(config, tokenizer).to(device).eval()
    lm_head = model.logits

    def never_eos(hidden: torch.Tensor) -> torch.Tensor:  # every text gets --new-tokens tokens
        if last_only and hidden.dim() == 3:
            hidden = hidden[:, -1:]
        return lm_head(hidden).index_fill(-1, eos, float("-inf"))

    eos = torch.tensor([tokenizer.eos_token_id], device=device)
    last_only = False
    model.logits = never_eos
    decoder = Decoder(model, tokenizer, VADLexicon({}))
    pixels = torch.randn(args.batch, 3, config.image_size, config.image_size, device=device)
    with torch.no_grad():
        memory = model.encode_images(pixels)

    def run(**kwargs):
        return lambda: decoder.generate(memory, args.new_tokens, **kwargs)

    cached_s, cached = timed(run(use_cache=True), args.repeats)
    uncached_s, uncached = timed(run(use_cache=False), args.repeats)
    last_only = True
    last_s, last = timed(run(use_cache=False), args.repeats)
    last_only = False
    beam_s, _ = timed(run(use_cache=True, beams=args.beams), args.repeats)
    if not cached == uncached == last or any(len(r) != args.new_tokens for r in cached):
        print("error: cached and uncached decoding disagree", file=sys.stderr)
        return 1
    graph_error = None
    try:  # last, and apart: a capture that fails must not cost the other rows
        started = time.perf_counter()
        run(use_cache=True, graph=True)()  # makes the fixed-shape step: on CUDA, its capture
        sync()
        first_graph_s = time.perf_counter() - started
        graph_s, graph = timed(run(use_cache=True, graph=True), args.repeats)  # reuses it
        if graph != cached:
            differ = sum(a != b for a, b in zip(graph, cached, strict=True))
            graph_error = f"graph=True wrote other tokens in {differ} of {len(cached)} texts"
    except Exception as error:  # whatever a failed capture raises
        graph_error = f"graph=True failed: {type(error).__name__}: {error}"
    graph_agrees = graph_error is None  # if not, its rows are left out and the run fails
    rate = lambda s: args.batch / s  # noqa: E731
    print(
        f"settings: {device.type}, {torch.get_num_threads()} threads; preset {args.preset}, "
        f"batch {args.batch}, {args.new_tokens} new tokens, median of {args.repeats}"
    )
    print("| decoding | s per batch | explanations/s |")
    print("|---|---:|---:|")
    print(f"| uncached, as released (prefix re-run, every position scored) | {uncached_s:.3f} "
          f"| {rate(uncached_s):.1f} |")  # fmt: skip
    print(f"| uncached, last position scored only | {last_s:.3f} | {rate(last_s):.1f} |")
    print(f"| KV-cached greedy | {cached_s:.3f} | {rate(cached_s):.1f} |")
    fixed = "CUDA graph" if device.type == "cuda" else "fixed shapes, eager"
    if graph_agrees:
        print(f"| KV-cached greedy, {fixed} | {graph_s:.3f} | {rate(graph_s):.1f} |")
    print(f"| KV-cached beam search, {args.beams} beams | {beam_s:.3f} | {rate(beam_s):.1f} |")
    print(f"cached / uncached as released: {uncached_s / cached_s:.2f}x (target >= 5x)")
    print(f"cached / uncached, last position only: {last_s / cached_s:.2f}x")
    if graph_agrees:
        print(f"cached, {fixed} / uncached as released: {uncached_s / graph_s:.2f}x")
        print(f"{fixed}: the first call, which makes the step, took {first_graph_s:.3f} s")
    if graph_error is not None:
        print(f"error: {graph_error}", file=sys.stderr)
    if args.phases:
        print(
            "phases of a KV-cached greedy step, ms, each waited for (a batch more each, after "
            "an untimed one):"
        )
        print("| steps | model (decoder + LM head) | new tokens read back, next inputs built | "
              "of which VAD lookups | step, in all | host share |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|")
        for name, graphed in (("growing caches", False), (fixed, True)):
            if graphed and not graph_agrees:
                continue
            ms = phase_times(decoder, memory, args.new_tokens, graphed)
            host = (ms["step"] - ms["logits"]) / ms["step"]
            print(f"| {name} | {ms['logits']:.2f} | {ms['append']:.2f} | "
                  f"{ms['_token_vad']:.2f} | {ms['step']:.2f} | {host:.0%} |")  # fmt: skip
    return 0 if graph_error is None else 1


if __name__ == "__main__":
    sys.exit(main())
