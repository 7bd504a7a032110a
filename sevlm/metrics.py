"""The paper's figures: emotion accuracy against the dominant emotion, caption scores, and the
emotional measures (alignment, VAD distance, unique explanations).

Caption scores are corpus-level (BLEU counts n-grams over all images at once, CIDEr weighs
n-grams by their rarity across the images), so distributed evaluation gathers generations
before scoring rather than averaging per-worker scores.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from sevlm.emotions import EMOTIONS
from sevlm.lexicon import VADLexicon

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
"""The predicted label when generated text names none of the nine emotions."""
CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",",
                    ":", "-", "--", "...", ";"}  # fmt: skip


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

    Images without a dominant emotion are excluded and counted in ``images_excluded``; with
    none left, the accuracy is None (not 0: there was nothing to be right about).
    Also returns ``per_emotion`` (by dominant emotion: images, correct, accuracy or None)
    and ``confusion``: rows the nine dominant emotions, columns the nine then ``unknown``.
    """
    columns = [*EMOTIONS, UNKNOWN]
    confusion = [[0] * len(columns) for _ in EMOTIONS]
    excluded = 0
    for key, emotion in predicted.items():
        truth = dominant_emotion(annotations[key])
        if truth is None:
            excluded += 1
            continue
        column = columns.index(emotion) if emotion in columns else len(EMOTIONS)
        confusion[EMOTIONS.index(truth)][column] += 1
    per_emotion = {}
    for i, emotion in enumerate(EMOTIONS):
        images, correct = sum(confusion[i]), confusion[i][i]
        per_emotion[emotion] = {
            "images": images, "correct": correct, "accuracy": correct / images if images else None,
        }  # fmt: skip
    counted = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(len(EMOTIONS)))
    return {
        "emotion_accuracy": correct / counted if counted else None,
        "images_scored": counted,
        "images_excluded": excluded,
        "per_emotion": per_emotion,
        "confusion": confusion,
        "confusion_columns": columns,
    }


# ---------------------------------------------------------------------------------------------
# Caption scores: pycocoevalcap, as the COCO caption toolkit computes them


def bleu(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[float]:
    """Corpus BLEU-1..4 (pycocoevalcap's scorer) on whitespace tokens of already-prepared
    (lowercase) text: the quick figure of validation during training, with no Java."""
    from pycocoevalcap.bleu.bleu import Bleu

    keys = sorted(candidates)
    if not keys:
        return [0.0] * 4
    gts = {k: [r or " " for r in references[k]] for k in keys}
    res = {k: [candidates[k] or " "] for k in keys}
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in score]


def java_available() -> bool:
    return shutil.which("java") is not None


def ptb_tokenize(texts: Mapping[str, Sequence[str]], java: bool | None = None) -> tuple[dict, str]:
    """Tokenize every text as the toolkit does: ``({key: [tokenized, ...]}, tokenizer)``.

    With Java, Stanford's PTB tokenizer (pycocoevalcap's own wrapper); without it, a
    fallback that lowercases and splits off the same punctuation, with a warning: close to
    PTB on plain explanations, not identical on every string.
    """
    reason = "java not found"
    if java_available() if java is None else java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        captions = {k: [{"caption": t} for t in v] for k, v in texts.items()}
        try:
            tokenized = PTBTokenizer().tokenize(captions)
            if all(len(tokenized.get(k, ())) == len(v) for k, v in texts.items()):
                return tokenized, "ptb"
            reason = "the PTB tokenizer returned fewer lines than it was given"
        except OSError as e:  # e.g. it writes a temp file beside itself: a read-only install
            reason = f"the PTB tokenizer could not run ({e})"
    log.warning("%s: captions tokenized by a Python fallback, not Stanford PTB", reason)
    return {k: [_fallback_tokens(t) for t in v] for k, v in texts.items()}, "fallback"


def _fallback_tokens(text: str) -> str:
    pieces = re.findall(r"\w+(?:'\w+)?|'\w+|[^\w\s]+", text.lower().replace("\n", " "))
    words = []
    for piece in pieces:  # PTB splits clitics: "it's" -> "it 's"
        head, apostrophe, tail = piece.partition("'")
        words += [head, apostrophe + tail] if apostrophe and head else [piece]
    return " ".join(w for w in words if w not in _PTB_PUNCTUATION)


def caption_scores(
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    java: bool | None = None,
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of one candidate per image against all of the
    image's references, tokenized and scored by pycocoevalcap.

    METEOR needs Java: without it, ``meteor`` is None and ``meteor_unavailable`` says why.
    ``tokenizer`` says which tokenizer ran (``ptb`` or ``fallback``).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    java = java_available() if java is None else java
    keys = sorted(candidates)
    if not keys:
        raise ValueError("no candidates to score")
    if missing := [k for k in keys if not references.get(k)]:
        raise ValueError(f"{len(missing)} image(s) have no reference, e.g. {missing[0]!r}")
    gts, tokenizer = ptb_tokenize({k: list(references[k]) for k in keys}, java)
    res, _ = ptb_tokenize({k: [candidates[k]] for k in keys}, java)
    out: dict = {"tokenizer": tokenizer}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"bleu{n}": float(s) for n, s in enumerate(b, start=1)})
    out["meteor"], reason = _meteor(gts, res, java)
    if reason:
        out["meteor_unavailable"] = reason
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    return out


def _meteor(gts: dict, res: dict, java: bool) -> tuple[float | None, str | None]:
    if not java:
        return None, "METEOR needs Java (java not found on PATH)"
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
        score = float(scorer.compute_score(gts, res)[0])
        del scorer  # ends the Java process now, not at interpreter exit
        return score, None
    except Exception as e:  # the scores computed so far are not lost for want of METEOR
        return None, f"METEOR failed: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Emotional measures


def vad_distance(
    generated: Mapping[str, str], references: Mapping[str, Sequence[str]], lexicon: VADLexicon
) -> dict:
    """Mean Euclidean distance between the lexicon VAD of each generated explanation and of
    its image's references (the mean over all the references' known words).

    Images where either side has no word the lexicon knows are left out and counted.
    """
    distances = []
    for key, text in generated.items():
        ours, theirs = lexicon.text_vad(text), lexicon.text_vad(" ".join(references[key]))
        if ours is not None and theirs is not None:
            distances.append(float(np.linalg.norm(ours - theirs)))
    return {
        "vad_distance": float(np.mean(distances)) if distances else None,
        "vad_images": len(distances),
        "vad_images_unknown": len(generated) - len(distances),
    }


def unique_ratio(explanations: Sequence[str]) -> float:
    """Distinct explanations over explanations (1.0: every image got its own)."""
    return len(set(explanations)) / len(explanations) if explanations else 0.0
