"""The paper's figures: emotion accuracy against the dominant emotion, and caption scores.

Scores are corpus-level (BLEU counts n-grams over all images at once), so distributed
evaluation gathers generations before scoring rather than averaging per-worker scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence


def dominant_emotion(emotions: Sequence[str]) -> str | None:
    """The emotion holding more than half of an image's annotations, or None (no majority)."""
    if not emotions:
        return None
    emotion, votes = Counter(emotions).most_common(1)[0]
    return emotion if votes * 2 > len(emotions) else None


def emotion_accuracy(
    predicted: Mapping[str, str], annotations: Mapping[str, Sequence[str]]
) -> dict:
    """Accuracy of ``predicted`` (image -> emotion) against each image's dominant emotion.

    Images without a dominant emotion are excluded and counted in ``excluded``.
    """
    correct = counted = excluded = 0
    for key, emotion in predicted.items():
        truth = dominant_emotion(annotations[key])
        if truth is None:
            excluded += 1
            continue
        counted += 1
        correct += emotion == truth
    return {
        "emotion_accuracy": correct / counted if counted else 0.0,
        "images_scored": counted,
        "images_excluded": excluded,
    }


def bleu(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[float]:
    """Corpus BLEU-1..4 (pycocoevalcap's scorer) of one candidate per image against all of the
    image's references, on whitespace tokens of already-prepared (lowercase) text."""
    from pycocoevalcap.bleu.bleu import Bleu

    keys = sorted(candidates)
    if not keys:
        return [0.0] * 4
    gts = {k: [r or " " for r in references[k]] for k in keys}
    res = {k: [candidates[k] or " "] for k in keys}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in score]
