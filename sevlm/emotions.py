"""The nine ArtEmis emotions, in canonical order, and the one way labels are matched."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something else",
)
EMOTION_TO_INDEX: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}
POSITIVE: frozenset[str] = frozenset(EMOTIONS[:4])
NEGATIVE: frozenset[str] = frozenset(EMOTIONS[4:8])


def normalize_emotion(label: object) -> str | None:
    """The canonical emotion for a data label, or None when it names none of the nine.

    Labels match after trimming whitespace and lowercasing, and inner runs of whitespace
    count as one space: ``" Sadness "`` is sadness, ``"SOMETHING  ELSE"`` is something else.
    """
    if not isinstance(label, str):
        return None
    index = EMOTION_TO_INDEX.get(" ".join(label.split()).lower())
    return None if index is None else EMOTIONS[index]  # the shared string, not a copy per row
