"""ArtEmis utterance preparation: lowercase, expand contractions, punctuation to spaces, tokenize.

As in the ArtEmis toolkit, utterances shorter than ``min_tokens`` are dropped and so are those
longer than a percentile of the training split's lengths. These are choices about text length,
not data validity, and are reported apart from the skipped rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_CONTRACTIONS = {
    "can't": "cannot",
    "won't": "will not",
    "shan't": "shall not",
    "ain't": "is not",
    "let's": "let us",
    "it's": "it is",
    "that's": "that is",
    "there's": "there is",
    "here's": "here is",
    "what's": "what is",
    "who's": "who is",
    "he's": "he is",
    "she's": "she is",
    "where's": "where is",
}
_SUFFIXES = (
    ("n't", " not"),
    ("'re", " are"),
    ("'ve", " have"),
    ("'ll", " will"),
    ("'d", " would"),
    ("'m", " am"),
)
_WORD_WITH_APOSTROPHE = re.compile(r"(?<![a-z])[a-z]+'[a-z]+")  # anchored: linear time
_NOT_WORD = re.compile(r"[^a-z0-9']+|'")


def _expand(match: re.Match[str]) -> str:
    word = match.group(0)
    if word in _CONTRACTIONS:
        return _CONTRACTIONS[word]
    for suffix, expansion in _SUFFIXES:
        if word.endswith(suffix):
            return word[: -len(suffix)] + expansion
    return word


def tokenize_utterance(text: str) -> list[str]:
    """ArtEmis-style tokens: ``"It's GLOOMY, isn't it?"`` -> it is gloomy is not it."""
    text = text.lower().replace("’", "'").replace("‘", "'")
    text = _WORD_WITH_APOSTROPHE.sub(_expand, text)
    return _NOT_WORD.sub(" ", text).split()


@dataclass(frozen=True)
class UtterancePrep:
    """How utterances become explanation text for training."""

    enabled: bool = True
    """Apply the ArtEmis preparation; off keeps utterances as written (whitespace collapsed)."""
    min_tokens: int = 5
    """Drop utterances with fewer tokens than this."""
    max_percentile: float = 95.0
    """Drop utterances longer than this percentile of the training split's token counts."""

    def __post_init__(self) -> None:
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if not 0 < self.max_percentile <= 100:
            raise ValueError(f"max_percentile must be in (0, 100], got {self.max_percentile}")

    def clean(self, utterance: str) -> list[str]:
        """The utterance's tokens under this preparation."""
        return tokenize_utterance(utterance) if self.enabled else utterance.split()

    def max_tokens(self, train_lengths: Sequence[int]) -> int | None:
        """The length limit from the training split (None: no limit)."""
        if not self.enabled or not train_lengths:
            return None
        return percentile_int(train_lengths, self.max_percentile)

    def verdict(self, n_tokens: int, max_tokens: int | None) -> str | None:
        """None when an utterance of ``n_tokens`` is kept, else ``too_short`` or ``too_long``."""
        if not self.enabled:
            return None
        if n_tokens < self.min_tokens:
            return "too_short"
        if max_tokens is not None and n_tokens > max_tokens:
            return "too_long"
        return None


def percentile_int(values: Sequence[int], q: float) -> int:
    """The nearest-rank percentile (a value that occurs in ``values``)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
