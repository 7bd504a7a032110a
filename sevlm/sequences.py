"""Training sequences: ``<bos> the emotion is <emotion> because <explanation> <eos>``.

Each token carries a segment id (the token id of ``<emotion>`` up to the emotion word, of
``<explanation>`` from `` because`` on, pads included) and the lexicon VAD of its word. A
training example is one image with two sequences: an anchor annotation and, for the
contrastive head, an annotation of a different emotion of the same image.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sevlm.emotions import EMOTION_TO_INDEX
from sevlm.lexicon import VADLexicon
from sevlm.tokenizer import EMOTION_TOKEN, EXPLANATION_TOKEN

if TYPE_CHECKING:  # a type only: data stages import this module in fresh processes
    from transformers import PreTrainedTokenizerBase

PROMPT = " the emotion is"
"""The text after ``<bos>`` that every sequence starts with; generation starts from it."""
BECAUSE = " because"
"""The word that opens the explanation segment."""
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One sequence, padded to the builder's ``max_len``."""

    input_ids: np.ndarray
    """int64 ``[L]``: token ids, pad after ``<eos>``."""
    labels: np.ndarray
    """int64 ``[L]``: the ids to predict (the model shifts them); -100 at ``<bos>`` and pads."""
    segment_ids: np.ndarray
    """int64 ``[L]``: the ``<emotion>`` or ``<explanation>`` token id of each position."""
    vad: np.ndarray
    """float32 ``[L, 3]``: the lexicon VAD of each token's word, zeros when unknown."""
    vad_mask: np.ndarray
    """bool ``[L]``: whether the lexicon knows the token's word."""
    length: int
    """Tokens before padding."""
    truncated: bool
    """Whether the explanation was cut to fit ``max_len`` (``<eos>`` is kept)."""


class SequenceBuilder:
    """Turns (emotion, explanation) pairs into padded sequences for a tokenizer and lexicon."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, lexicon: VADLexicon | None, max_len: int = 30
    ) -> None:
        self.tokenizer = tokenizer
        self.lexicon = lexicon if lexicon is not None else VADLexicon({})
        self.max_len = max_len
        self.emotion_segment = tokenizer.convert_tokens_to_ids(EMOTION_TOKEN)
        self.explanation_segment = tokenizer.convert_tokens_to_ids(EXPLANATION_TOKEN)
        if tokenizer.pad_token_id is None or self.emotion_segment == tokenizer.unk_token_id:
            raise ValueError("the tokenizer lacks the project tokens: use sevlm.tokenizer")
        prompt_ids, _, _ = self._piece(PROMPT)
        if max_len < len(prompt_ids) + 4:
            raise ValueError(f"max_len {max_len} is too short for the sequence format")
        self._emotion_pieces = {e: self._piece(f"{PROMPT} {e}") for e in EMOTION_TO_INDEX}
        """The emotion part of each of the nine emotions' sequences, tokenized once."""

    def _piece(self, text: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        return self._pieces([text])[0]

    def _pieces(self, texts: Sequence[str]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """Token ids, per-token VAD and whether it is known, of each text: one tokenizer call
        for them all (a call's own overhead outweighs a short text's tokenizing)."""
        if not texts:  # the tokenizer fails on an empty list; a batch can lose all its rows
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        pieces = []
        for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
            vad, known = self.lexicon.token_vad(text, offsets)
            pieces.append((list(ids), vad, known))
        return pieces

    def prompt(self) -> Encoded:
        """``<bos> the emotion is``, unpadded: where generation starts."""
        ids, vad, known = self._piece(PROMPT)
        bos = self.tokenizer.bos_token_id
        n = len(ids) + 1
        return Encoded(
            input_ids=np.asarray([bos, *ids], np.int64),
            labels=np.full(n, IGNORE_INDEX, np.int64),
            segment_ids=np.full(n, self.emotion_segment, np.int64),
            vad=np.concatenate([np.zeros((1, 3), np.float32), vad]),
            vad_mask=np.concatenate([[False], known]),
            length=n,
            truncated=False,
        )

    def encode(self, emotion: str, explanation: str) -> Encoded:
        """The padded training sequence for one annotation."""
        return self.encode_many([(emotion, explanation)])[0]

    def encode_many(self, annotations: Sequence[tuple[str, str]]) -> list[Encoded]:
        """The padded training sequence of each ``(emotion, explanation)``."""
        for emotion, _ in annotations:
            if emotion not in EMOTION_TO_INDEX:
                raise ValueError(f"not one of the nine emotions: {emotion!r}")
        explanations = self._pieces([f"{BECAUSE} {text.strip()}" for _, text in annotations])
        return [
            self._assemble(self._emotion_pieces[emotion], piece)
            for (emotion, _), piece in zip(annotations, explanations, strict=True)
        ]

    def _assemble(self, emotion_piece: tuple, explanation_piece: tuple) -> Encoded:
        """``<bos>``, the emotion part, the explanation part cut to fit, ``<eos>``, pads."""
        emo_ids, emo_vad, emo_known = emotion_piece
        exp_ids, exp_vad, exp_known = explanation_piece
        room = self.max_len - 2 - len(emo_ids)  # <bos> and <eos>
        truncated = len(exp_ids) > room
        exp_ids, exp_vad, exp_known = exp_ids[:room], exp_vad[:room], exp_known[:room]
        bos, eos, pad = (
            self.tokenizer.bos_token_id,
            self.tokenizer.eos_token_id,
            self.tokenizer.pad_token_id,
        )
        ids = [bos, *emo_ids, *exp_ids, eos]
        n, n_pad = len(ids), self.max_len - len(ids)
        input_ids = np.asarray(ids + [pad] * n_pad, np.int64)
        labels = input_ids.copy()
        labels[0] = IGNORE_INDEX
        labels[n:] = IGNORE_INDEX
        n_emotion = 1 + len(emo_ids)
        segments = np.full(self.max_len, self.explanation_segment, np.int64)
        segments[:n_emotion] = self.emotion_segment
        zero = np.zeros((1, 3), np.float32)
        vad = np.concatenate([zero, emo_vad, exp_vad, zero, np.zeros((n_pad, 3), np.float32)])
        mask = np.concatenate([[False], emo_known, exp_known, [False], np.zeros(n_pad, bool)])
        return Encoded(input_ids, labels, segments, vad, mask, n, truncated)


def _rng(seed: int, epoch: int, key: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}|{epoch}|{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def pick_pair(
    emotions: Sequence[str], key: str, epoch: int, seed: int = 0
) -> tuple[int, int, bool]:
    """Indices ``(anchor, partner, has_pair)`` of an image's annotations for one epoch.

    The anchor cycles through the annotations, one per epoch, in a seeded order; the partner
    is a random annotation of a different emotion. An image with a single emotion gets another
    of its annotations (or the same one) and ``has_pair`` False: it trains the language model
    only. Deterministic in ``(seed, epoch, key)``.
    """
    if not emotions:
        raise ValueError(f"{key}: no annotations to pair")
    order = list(range(len(emotions)))
    _rng(seed, -1, key).shuffle(order)
    anchor = order[epoch % len(order)]
    others = [i for i, e in enumerate(emotions) if e != emotions[anchor]]
    if others:
        return anchor, _rng(seed, epoch, key).choice(others), True
    return anchor, order[(epoch + 1) % len(order)], False


def encode_pair(
    builder: SequenceBuilder,
    emotions: Sequence[str],
    texts: Sequence[str],
    key: str,
    epoch: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The two sequences of one image for one epoch, stacked ``[2, L]``, plus pairing fields."""
    return encode_pairs(builder, [(emotions, texts, key, epoch)], seed)[0]


def encode_pairs(
    builder: SequenceBuilder,
    images: Sequence[tuple[Sequence[str], Sequence[str], str, int]],
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """:func:`encode_pair` of each ``(emotions, texts, key, epoch)``, the texts of all of them
    tokenized in one call."""
    picks = [pick_pair(emotions, key, epoch, seed) for emotions, _, key, epoch in images]
    chosen = [
        (emotions[i], texts[i])
        for (emotions, texts, _, _), (anchor, partner, _) in zip(images, picks, strict=True)
        for i in (anchor, partner)
    ]
    encoded = builder.encode_many(chosen)
    out = []
    for j, (_, _, has_pair) in enumerate(picks):
        first, second = encoded[2 * j], encoded[2 * j + 1]
        out.append(
            {
                "input_ids": np.stack([first.input_ids, second.input_ids]),
                "labels": np.stack([first.labels, second.labels]),
                "segment_ids": np.stack([first.segment_ids, second.segment_ids]),
                "vad": np.stack([first.vad, second.vad]),
                "vad_mask": np.stack([first.vad_mask, second.vad_mask]),
                "emotion": np.asarray([EMOTION_TO_INDEX[e] for e, _ in chosen[2 * j : 2 * j + 2]]),
                "has_pair": np.asarray(has_pair),
            }
        )
    return out
