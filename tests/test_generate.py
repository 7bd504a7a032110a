"""Greedy decoding and beam search, checked against teacher-forced runs of the whole text."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from sevlm.config import ModelConfig
from sevlm.generate import Decoder, _FixedStep
from sevlm.lexicon import VADLexicon
from sevlm.tokenizer import load_tokenizer
from sevlm.weights import build_model

N_IMAGES = 3


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    """A tiny random model made to write texts that differ: sharp next-token distributions,
    ``<eos>`` and `` because`` likely enough to end texts and switch segments at various steps,
    and a VAD that reaches the explanation's embeddings (the fusion starts blind to it) through
    a lexicon that knows most short words."""
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny", dropout=0.0), tokenizer).eval()
    decoder = Decoder(model, tokenizer, VADLexicon({}))
    with torch.no_grad():
        model.ln_f.weight.mul_(20.0)
        direction = torch.randn(model.config.n_embd)
        model.ln_f.bias.copy_(direction)
        for token, boost in ((tokenizer.eos_token_id, 12.0), (decoder.because, 12.0)):
            model.wte.weight[token] += boost * direction / direction.norm() ** 2
        model.fuse.weight[:, -3:].normal_(0, 0.3)
    pieces = tokenizer.batch_decode([[i] for i in range(5000)])
    words = sorted({w.strip().lower() for w in pieces if w.strip().isalpha()})
    g = torch.Generator().manual_seed(0)
    vad = (torch.rand(len(words), 3, generator=g) * 2 - 1).tolist()
    decoder.lexicon = VADLexicon({w: tuple(v) for w, v in zip(words, vad, strict=True)})
    return decoder


@pytest.fixture(scope="module")
def memory(decoder: Decoder) -> Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return decoder.model.encode_images(torch.randn(N_IMAGES, 3, 64, 64, generator=g))


def next_logits(decoder: Decoder, memory: Tensor, tokens: list[int]) -> Tensor:
    """Logits ``[len(tokens) + 1, V]`` for each token after the prompt and the one after them,
    from one uncached run over the whole text of one image (``memory [1, M, C]``)."""
    model, prompt = decoder.model, decoder.prompt
    segments, vad, explaining = [], [], False
    for i, token in enumerate(tokens):
        explaining |= token == decoder.because
        segments.append(model.explanation_segment if explaining else model.emotion_segment)
        vad.append(decoder._token_vad([tokens[: i + 1]])[0, 0])
    ids = torch.tensor([[*prompt.input_ids, *tokens]])
    segs = torch.tensor([[*prompt.segment_ids, *segments]])
    vads = torch.cat([torch.as_tensor(prompt.vad), *(v[None] for v in vad)])[None]
    with torch.no_grad():
        hidden, _ = model.decode(ids, segs, vads, memory)
    return model.logits(hidden[0, len(prompt.input_ids) - 1 :])


def mean_log_prob(decoder: Decoder, memory: Tensor, tokens: list[int]) -> float:
    log_probs = next_logits(decoder, memory, tokens[:-1]).float().log_softmax(dim=-1)
    return log_probs[torch.arange(len(tokens)), tokens].mean().item()


def greedy_one_by_one(decoder: Decoder, memory: Tensor, room: int = 25) -> list[int]:
    tokens: list[int] = []
    while len(tokens) < room and decoder.tokenizer.eos_token_id not in tokens:
        tokens.append(int(next_logits(decoder, memory, tokens)[-1].argmax()))
    return tokens


def beam_search_one_by_one(
    decoder: Decoder, memory: Tensor, beams: int, room: int = 25
) -> tuple[list[int], float]:
    """What :meth:`Decoder.beam_search` describes, for one image, written plainly: every
    hypothesis re-run whole at each step, and no stopping before ``room`` tokens."""
    eos = decoder.tokenizer.eos_token_id
    live: list[tuple[float, list[int]]] = [(0.0, [])]
    finished: list[tuple[float, list[int]]] = []
    for _ in range(room):
        extended = []
        for total, tokens in live:
            log_probs = next_logits(decoder, memory, tokens)[-1].float().log_softmax(dim=-1)
            best, ids = (x.tolist() for x in log_probs.topk(2 * beams))
            extended += [(total + p, [*tokens, t]) for p, t in zip(best, ids, strict=True)]
        extended = sorted(extended, key=lambda c: -c[0])[: 2 * beams]
        finished += [(total / len(t), t) for total, t in extended[:beams] if t[-1] == eos]
        live = [(total, t) for total, t in extended if t[-1] != eos][:beams]
    if finished:
        score, tokens = max(finished, key=lambda c: c[0])
        return tokens, score
    return live[0][1], live[0][0] / room


def test_one_beam_is_greedy_decoding(decoder: Decoder, memory: Tensor) -> None:
    greedy = decoder.generate(memory)
    assert decoder.generate(memory, beams=1) == greedy
    assert greedy == [greedy_one_by_one(decoder, memory[i : i + 1]) for i in range(N_IMAGES)]
    eos = decoder.tokenizer.eos_token_id
    assert any(row[-1] == eos and len(row) < 25 for row in greedy)  # a text ended early


@pytest.mark.parametrize("room", [25, 10])
def test_fixed_shape_steps_are_greedy_decoding(
    decoder: Decoder, memory: Tensor, room: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``graph=True`` (preallocated caches written in place; replayed as a CUDA graph on
    CUDA, run eagerly here) writes the texts that the growing caches write: texts that end
    early are padded, segments switch, VAD reaches the fused embeddings."""
    greedy = decoder.generate(memory, room)
    calls = []
    step = _FixedStep.__call__
    monkeypatch.setattr(_FixedStep, "__call__", lambda *a: calls.append(1) or step(*a))
    fixed = decoder.generate(memory, room, graph=True)
    assert fixed == greedy
    assert len(calls) == max(len(row) for row in fixed) - 1  # every step after the prompt's
    if room == 25:
        assert any(decoder.because in row for row in fixed)
        assert any(row[-1] == decoder.tokenizer.eos_token_id and len(row) < 25 for row in fixed)
        assert [e.text for e in decoder.explain_memory(memory)] == [
            e.text for e in decoder.explain_memory(memory, graph=True)
        ]
    for settings in ({"beams": 3}, {"use_cache": False}):
        with pytest.raises(ValueError, match="KV-cached greedy"):
            decoder.generate(memory, graph=True, **settings)


def test_fixed_shape_steps_are_reused_and_reloaded(decoder: Decoder, memory: Tensor) -> None:
    """A later call of the same shapes reuses the step (on CUDA, its captured graph) with the
    new images and prompt caches loaded; other shapes make a new one."""
    decoder.generate(memory, graph=True)
    step = decoder._fixed
    other = memory.flip(0) + 0.5 * torch.randn_like(memory)
    assert decoder.generate(other) != decoder.generate(memory)
    assert decoder.generate(other, graph=True) == decoder.generate(other)
    assert decoder._fixed is step
    assert decoder.generate(memory, graph=True) == decoder.generate(memory)
    assert decoder.generate(memory[:2], graph=True) == decoder.generate(memory[:2])
    assert decoder._fixed is not step
    decoder.model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            decoder.generate(memory, graph=True)
    finally:
        decoder.model.eval()


def test_cached_and_uncached_beam_search_give_identical_tokens(decoder, memory) -> None:
    cached = decoder.generate(memory, beams=3)
    assert decoder.generate(memory, beams=3, use_cache=False) == cached
    assert cached != decoder.generate(memory)  # the beams left the greedy path
    assert all(row[-1] == decoder.tokenizer.eos_token_id for row in cached)
    assert len({len(row) for row in cached}) == N_IMAGES  # images stopped at different steps
    assert any(decoder.because in row for row in cached)


@pytest.mark.parametrize("room", [25, 10])
def test_beam_search_is_the_plain_search(decoder: Decoder, memory: Tensor, room: int) -> None:
    for i, found in enumerate(decoder.beam_search(memory, 3, max_new_tokens=room)):
        tokens, score = beam_search_one_by_one(decoder, memory[i : i + 1], 3, room)
        assert found.tokens == tokens
        assert found.score == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("beams", [3, 6])
def test_beam_score_is_the_mean_log_prob_and_beats_greedy(decoder, memory, beams) -> None:
    greedy = decoder.generate(memory)
    for i, found in enumerate(decoder.beam_search(memory, beams)):
        one = memory[i : i + 1]
        assert found.score == pytest.approx(mean_log_prob(decoder, one, found.tokens), abs=1e-4)
        assert found.score >= mean_log_prob(decoder, one, greedy[i])


def test_images_are_searched_independently(decoder: Decoder, memory: Tensor) -> None:
    together = decoder.beam_search(memory, 3)
    for i, found in enumerate(together):
        (alone,) = decoder.beam_search(memory[i : i + 1], 3)
        assert alone.tokens == found.tokens
        assert alone.score == pytest.approx(found.score, abs=1e-5)


def test_explanations_from_beams(decoder: Decoder, memory: Tensor) -> None:
    said = decoder.explain_memory(memory, beams=3)
    texts = decoder.tokenizer.batch_decode(decoder.generate(memory, beams=3))
    assert [s.text for s in said] == [t.removesuffix("<|endoftext|>") for t in texts]


def test_beams_must_be_positive_and_fit_the_vocabulary(decoder: Decoder, memory: Tensor) -> None:
    most = decoder.model.config.vocab_size // 2  # each step ranks 2 * beams extensions
    for beams in (0, most + 1):
        with pytest.raises(ValueError, match=f"beams must be from 1 to {most}, not {beams}"):
            decoder.generate(memory, beams=beams)


def test_the_last_word_memo_reads_as_the_whole_text(decoder: Decoder) -> None:
    """A token's VAD word, from its memoised own text where that suffices, is the word the
    whole text ends with, for texts of every kind of token: words and their pieces, joiners
    (apostrophes, hyphens), digits, accented letters split across byte-level tokens."""
    tokenizer = decoder.tokenizer

    def reference(tokens: list[int]) -> str | None:
        if not tokenizer.decode(tokens[-1:])[-1:].isalpha():
            return None
        text = decoder._prompt_text + tokenizer.decode(tokens)
        match = re.search(r"[^\W\d_]+(?:['’-][^\W\d_]+)*$", text)
        return match.group(0) if match else None

    texts = [
        " the painting's dark-blue sky feels calm because of 3rd-rate café naïveté",
        " it isn't awe, it's Ångström's über-realism of 19th century élan",
        " rock-n-roll colours, l'été, don’t stop",
    ]
    rows = [tokenizer.encode(t) for t in texts]
    rows += [[127, 22757], [159, 47703]]  # a character's bytes split: alone, '\ufffd醒' ...
    g = torch.Generator().manual_seed(0)
    rows += torch.randint(0, len(tokenizer), (200, 12), generator=g).tolist()
    decoder._words.clear()
    for _ in range(2):  # the second pass reads the memo
        for row in rows:
            for end in range(1, len(row) + 1):
                assert decoder._last_word(row[:end]) == reference(row[:end]), row[:end]
    assert len(decoder._words) > 100
