"""The paper's figures, computed the paper's way: pycocoevalcap's scorers and the dominant
emotion rule, on hand-made sets."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from sevlm.emotions import EMOTIONS
from sevlm.lexicon import VADLexicon
from sevlm.metrics import (
    caption_scores,
    dominant_emotion,
    emotion_accuracy,
    ptb_tokenize,
    unique_ratio,
    vad_distance,
)

CANDIDATES = {
    "a": "the dark sky is stormy and it's scary",
    "b": "a happy clown with bright colours",
    "c": "the calm lake feels peaceful",
    "d": "",
}
REFERENCES = {
    "a": [
        "The sky is dark, and stormy!",
        "it's a scary sea",
        "the waves crash against the rocks",
        "I feel afraid of the storm",
    ],
    "b": ["a happy clown", "bright colors make me smile", "the clown looks silly"],
    "c": ["the lake is calm and peaceful", "soft light on still water", "it feels quiet"],
    "d": ["nothing in particular", "a plain grey wall", "i do not know what to feel"],
}


def toolkit_scores(candidates: dict, references: dict) -> dict:
    """pycocoevalcap used directly, as the COCO caption evaluation does."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": r} for r in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in candidates.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        **{f"bleu{n}": b for n, b in enumerate(bleu, start=1)},
        "meteor": Meteor().compute_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


def test_caption_scores_equal_pycocoevalcap_called_directly() -> None:
    ours = caption_scores(CANDIDATES, REFERENCES)
    theirs = toolkit_scores(CANDIDATES, REFERENCES)
    assert ours["tokenizer"] == "ptb" and "meteor_unavailable" not in ours
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12), key
    assert 0 < ours["bleu1"] < 1 and 0 < ours["meteor"] < 1 and ours["cider"] > 0


def test_every_reference_counts() -> None:
    """A candidate equal to an image's fourth reference is a perfect match for it."""
    candidates = {"a": "the waves crash against the rocks", "b": "the clown looks silly"}
    scores = caption_scores(candidates, {k: REFERENCES[k] for k in candidates})
    assert scores["bleu4"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)
    first_only = caption_scores(candidates, {k: REFERENCES[k][:1] for k in candidates})
    assert first_only["bleu1"] < 0.5 and first_only["rouge_l"] < 0.5
    # And against the toolkit with three and four references per image:
    theirs = toolkit_scores(candidates, {k: REFERENCES[k] for k in candidates})
    assert scores["cider"] == pytest.approx(float(theirs["cider"]))
    assert scores["meteor"] == pytest.approx(float(theirs["meteor"]))


def test_without_java_meteor_is_unavailable_not_zero(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sevlm.metrics"):
        scores = caption_scores(CANDIDATES, REFERENCES, java=False)
    assert scores["meteor"] is None and "Java" in scores["meteor_unavailable"]
    assert scores["tokenizer"] == "fallback"
    assert any("java not found" in r.message for r in caplog.records)
    with_java = caption_scores(CANDIDATES, REFERENCES)
    for key in ("bleu1", "bleu4", "rouge_l", "cider"):  # the fallback tokenizes these alike
        assert scores[key] == pytest.approx(with_java[key], rel=1e-9), key


def test_fallback_tokenizer_matches_ptb_on_plain_text() -> None:
    texts = {"x": ["It's a DARK, stormy night!", "the clown's hat -- so silly...", "a b; c: d?"]}
    ptb, name = ptb_tokenize(texts, java=True)
    fallback, _ = ptb_tokenize(texts, java=False)
    assert name == "ptb" and fallback == ptb


def test_scoring_nothing_or_an_image_without_references_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        caption_scores({}, {})
    with pytest.raises(ValueError, match="no reference"):
        caption_scores({"a": "x"}, {"a": []}, java=False)


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        (["awe", "awe", "fear"], "awe"),  # clear majority
        (["awe", "awe", "fear", "fear"], None),  # a tie, exactly half each
        (["awe", "awe", "fear", "sadness"], None),  # exactly half is not more than half
        (["awe", "awe", "awe", "fear", "sadness"], "awe"),  # 3 of 5
        (["awe", "fear", "sadness"], None),  # all different
        (["sadness"], "sadness"),
        ([], None),
    ],
)
def test_dominant_emotion(votes: list[str], expected: str | None) -> None:
    assert dominant_emotion(votes) == expected


def test_accuracy_exclusions_per_emotion_and_confusion() -> None:
    annotations = {
        "p1": ["awe", "awe", "fear"],  # awe
        "p2": ["awe", "awe", "awe", "sadness"],  # awe
        "p3": ["fear", "fear", "fear"],  # fear
        "p4": ["anger", "anger", "fear", "fear"],  # tie: excluded
        "p5": ["sadness", "sadness", "awe", "fear"],  # exactly half: excluded
        "p6": ["sadness", "sadness", "sadness", "awe"],  # sadness
    }
    predicted = {"p1": "awe", "p2": "fear", "p3": "fear", "p4": "anger", "p5": "sadness",
                 "p6": "unknown"}  # fmt: skip
    out = emotion_accuracy(predicted, annotations)
    assert out["images_excluded"] == 2 and out["images_scored"] == 4
    assert out["emotion_accuracy"] == pytest.approx(2 / 4)
    per = out["per_emotion"]
    assert per["awe"] == {"images": 2, "correct": 1, "accuracy": 0.5}
    assert per["fear"] == {"images": 1, "correct": 1, "accuracy": 1.0}
    assert per["sadness"] == {"images": 1, "correct": 0, "accuracy": 0.0}
    assert per["anger"] == {"images": 0, "correct": 0, "accuracy": None}
    columns = out["confusion_columns"]
    assert columns == [*EMOTIONS, "unknown"] and len(out["confusion"]) == 9
    row = lambda e: out["confusion"][EMOTIONS.index(e)]  # noqa: E731
    assert row("awe")[columns.index("awe")] == 1 and row("awe")[columns.index("fear")] == 1
    assert row("sadness")[columns.index("unknown")] == 1
    assert sum(map(sum, out["confusion"])) == 4
    none_scored = emotion_accuracy({"p4": "anger"}, {"p4": annotations["p4"]})
    assert none_scored["emotion_accuracy"] is None and none_scored["images_excluded"] == 1


def test_vad_distance_and_unique_ratio() -> None:
    lexicon = VADLexicon(
        {"happy": (1.0, 0.5, 0.0), "sad": (-1.0, -0.5, 0.0), "calm": (0.5, -1.0, 0.5)}
    )
    generated = {"a": "a happy day", "b": "so sad", "c": "nothing known here"}
    references = {"a": ["happy", "sad"], "b": ["calm and sad"], "c": ["happy"]}
    out = vad_distance(generated, references, lexicon)
    # a: (1, .5, 0) vs mean of happy, sad = 0 -> |(1, .5, 0)|; b: sad vs mean(calm, sad)
    b_ref = (np.array([0.5, -1.0, 0.5]) + np.array([-1.0, -0.5, 0.0])) / 2
    expected = [np.linalg.norm([1.0, 0.5, 0.0]), np.linalg.norm(np.array([-1.0, -0.5, 0]) - b_ref)]
    assert out["vad_distance"] == pytest.approx(float(np.mean(expected)), rel=1e-6)
    assert out["vad_images"] == 2 and out["vad_images_unknown"] == 1
    assert vad_distance({"c": "zzz"}, {"c": ["zzz"]}, lexicon)["vad_distance"] is None
    assert unique_ratio(["a b", "a b", "c"]) == pytest.approx(2 / 3)
    assert unique_ratio([]) == 0.0
