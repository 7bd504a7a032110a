"""The NRC-VAD lexicon: word -> (valence, arousal, dominance), always held in [-1, 1].

Reads the published layouts: v1 (``word<TAB>V<TAB>A<TAB>D`` in [0, 1], header line
``Word Valence Arousal Dominance`` optional), the v1 BipolarScale file and v2 (header
``term valence arousal dominance``), both in [-1, 1]. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Scale = Literal["auto", "unit", "bipolar"]
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_HEADER_FIRST = {"word", "term"}

log = logging.getLogger(__name__)


class LexiconError(ValueError):
    """A lexicon file that cannot be read: the message names the file and line."""


@dataclass(frozen=True)
class VADLexicon:
    """Word -> VAD in [-1, 1]; ``source`` and ``sha256`` say which file it came from."""

    table: dict[str, tuple[float, float, float]]
    source: str = ""
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.table)

    def get(self, word: str) -> tuple[float, float, float] | None:
        """The VAD of a word (case-insensitive), or None when the lexicon lacks it."""
        return self.table.get(word.lower())

    def token_vad(self, text: str, offsets: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per-token VAD for a tokenized text: ``(vad [n, 3] float32, known [n] bool)``.

        ``offsets`` are the tokens' character spans in ``text`` (a fast tokenizer's
        ``offset_mapping``). Every sub-token of a word gets that word's VAD; tokens of
        unknown words, and tokens with an empty span (special tokens, pads), get zeros.
        """
        vad = np.zeros((len(offsets), 3), dtype=np.float32)
        known = np.zeros(len(offsets), dtype=bool)
        words = [(m.start(), m.end(), self.get(m.group(0))) for m in _WORD.finditer(text)]
        w = 0
        for i, (start, end) in enumerate(offsets):
            if end <= start:
                continue
            while w < len(words) and words[w][1] <= start:
                w += 1
            if w < len(words) and words[w][0] < end and words[w][2] is not None:
                vad[i] = words[w][2]
                known[i] = True
        return vad, known

    def coverage(self, texts: Iterable[str]) -> dict[str, float | int]:
        """How much of ``texts`` the lexicon knows: word tokens, known ones, their share."""
        words = known = 0
        for text in texts:
            for m in _WORD.finditer(text):
                words += 1
                known += self.get(m.group(0)) is not None
        return {"words": words, "known": known, "share": known / words if words else 0.0}

    def describe(self) -> dict[str, str | int]:
        return {"source": self.source, "sha256": self.sha256, "entries": len(self.table)}

    def text_vad(self, text: str) -> np.ndarray | None:
        """Mean VAD over the words of ``text`` the lexicon knows, or None when it knows none."""
        found = [v for m in _WORD.finditer(text) if (v := self.get(m.group(0))) is not None]
        return np.asarray(found, dtype=np.float32).mean(axis=0) if found else None


def read_lexicon(path: Path | str, scale: Scale = "auto") -> VADLexicon:
    """Read an NRC-VAD file in any published layout.

    ``scale`` says how values are stored: ``unit`` ([0, 1], mapped to 2x - 1), ``bipolar``
    ([-1, 1], kept), or ``auto``: bipolar for a v2 header (``term ...``) or when any value is
    negative, unit otherwise.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        lines = raw.decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LexiconError(f"{path}: cannot read lexicon: {e}") from e
    rows: list[tuple[str, float, float, float]] = []
    v2_header = False
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line = line.strip()
        fields = line.split("\t") if "\t" in line else line.split()
        if not rows and _is_header(fields):
            v2_header = fields[0].strip().lower() == "term"
            continue
        rows.append(_parse_row(path, lineno, fields))
    if not rows:
        raise LexiconError(f"{path}: no entries (expected 'word<TAB>V<TAB>A<TAB>D' lines)")
    bipolar = _is_bipolar(scale, v2_header, rows)
    low = -1.0 if bipolar else 0.0
    table: dict[str, tuple[float, float, float]] = {}
    conflicts: list[str] = []
    for word, *values in rows:
        if any(not low <= x <= 1.0 for x in values):
            raise LexiconError(f"{path}: {word!r} has values {values} outside [{low:g}, 1]")
        vad = tuple(values) if bipolar else tuple(2.0 * x - 1.0 for x in values)
        if table.setdefault(word, vad) != vad:  # type: ignore[arg-type]
            conflicts.append(word)
    if conflicts:
        log.warning("%s: %d word(s) appear again with other values; the first is kept (%s)",
                    path, len(conflicts), ", ".join(repr(w) for w in conflicts[:3]))  # fmt: skip
    return VADLexicon(table, source=str(path), sha256=hashlib.sha256(raw).hexdigest())


def _is_header(fields: list[str]) -> bool:
    """``Word Valence ...`` / ``term valence ...``: a known first name and no numbers."""
    if fields[0].strip().lower() not in _HEADER_FIRST:
        return False
    try:
        [float(x) for x in fields[1:]]
    except ValueError:
        return True
    return False


def _parse_row(path: Path, lineno: int, fields: list[str]) -> tuple[str, float, float, float]:
    if len(fields) < 4:
        raise LexiconError(f"{path}:{lineno}: expected a word and three values, got {fields!r}")
    word = " ".join(fields[:-3]).strip().lower()
    try:
        v, a, d = (float(x) for x in fields[-3:])
    except ValueError as e:
        raise LexiconError(f"{path}:{lineno}: values are not numbers: {fields[-3:]!r}") from e
    return word, v, a, d


def _is_bipolar(scale: Scale, v2_header: bool, rows: list[tuple[str, float, float, float]]) -> bool:
    if scale == "unit":
        return False
    if scale == "bipolar":
        return True
    if scale != "auto":
        raise ValueError(f"scale must be auto, unit or bipolar, got {scale!r}")
    negative = sum(x < 0 for _, *values in rows for x in values)
    if negative and not v2_header and negative < 0.01 * 3 * len(rows):
        log.warning("%d of %d values are negative, so the whole lexicon is read as [-1, 1]; "
                    "pass scale='unit' if it is [0, 1] with a few bad values",
                    negative, 3 * len(rows))  # fmt: skip
    return v2_header or negative > 0
