"""The training sequence format, segments, labels, VAD, truncation and pairing."""

from __future__ import annotations

import numpy as np
import pytest

from sevlm.lexicon import VADLexicon
from sevlm.sequences import IGNORE_INDEX, SequenceBuilder, encode_pair, pick_pair
from sevlm.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def builder() -> SequenceBuilder:
    lexicon = VADLexicon({"gloomy": (-0.8, -0.3, -0.4), "sadness": (-0.9, 0.1, -0.5)})
    return SequenceBuilder(load_tokenizer(), lexicon, max_len=30)


def test_format_segments_labels(builder: SequenceBuilder) -> None:
    tok = builder.tokenizer
    seq = builder.encode("something else", "the gloomy grey sky")
    text = tok.decode(seq.input_ids[: seq.length])
    eot = "<|endoftext|>"
    assert text == f"{eot} the emotion is something else because the gloomy grey sky{eot}"
    assert seq.input_ids.shape == (30,) and seq.length == 12  # 1 + 3 + 2 + 1 + 4 + 1
    assert (seq.input_ids[seq.length :] == tok.pad_token_id).all()
    because = list(seq.input_ids).index(tok.convert_tokens_to_ids("Ġbecause"))
    emo, exp = builder.emotion_segment, builder.explanation_segment
    assert (seq.segment_ids[:because] == emo).all() and (seq.segment_ids[because:] == exp).all()
    assert seq.labels[0] == IGNORE_INDEX and (seq.labels[seq.length :] == IGNORE_INDEX).all()
    assert (seq.labels[1 : seq.length] == seq.input_ids[1 : seq.length]).all()
    gloomy = list(seq.input_ids).index(tok.convert_tokens_to_ids("Ġgloomy"))
    assert seq.vad_mask.sum() == 1 and seq.vad_mask[gloomy]
    assert seq.vad[gloomy] == pytest.approx((-0.8, -0.3, -0.4))
    assert not seq.truncated


def test_emotion_word_gets_its_vad(builder: SequenceBuilder) -> None:
    seq = builder.encode("sadness", "it rains")
    idx = list(seq.input_ids).index(builder.tokenizer.convert_tokens_to_ids("Ġsadness"))
    assert seq.vad_mask[idx] and seq.segment_ids[idx] == builder.emotion_segment


def test_long_explanation_is_truncated_keeping_eos(builder: SequenceBuilder) -> None:
    seq = builder.encode("awe", " ".join(["mountain"] * 50))
    assert seq.truncated and seq.length == 30
    assert seq.input_ids[-1] == builder.tokenizer.eos_token_id
    assert seq.labels[-1] == builder.tokenizer.eos_token_id


def test_prompt_is_the_start_of_every_sequence(builder: SequenceBuilder) -> None:
    prompt = builder.prompt()
    seq = builder.encode("fear", "the dark shapes")
    assert (seq.input_ids[: prompt.length] == prompt.input_ids).all()
    assert (prompt.segment_ids == builder.emotion_segment).all()


def test_bad_inputs(builder: SequenceBuilder) -> None:
    with pytest.raises(ValueError, match="nine emotions"):
        builder.encode("joy", "x")
    with pytest.raises(ValueError, match="too short"):
        SequenceBuilder(builder.tokenizer, None, max_len=6)


def test_pairs_have_different_emotions_and_cycle_anchors() -> None:
    emotions = ["awe", "awe", "fear", "awe", "sadness"]
    anchors = set()
    for epoch in range(5):
        anchor, partner, has_pair = pick_pair(emotions, "Cubism/x", epoch, seed=1)
        assert has_pair and emotions[anchor] != emotions[partner]
        anchors.add(anchor)
        assert pick_pair(emotions, "Cubism/x", epoch, seed=1) == (anchor, partner, True)
    assert anchors == set(range(5))  # every annotation is an anchor once in 5 epochs


def test_single_emotion_image_trains_lm_only() -> None:
    anchor, partner, has_pair = pick_pair(["awe", "awe"], "k", 0)
    assert not has_pair and {anchor, partner} == {0, 1}
    assert pick_pair(["awe"], "k", 3) == (0, 0, False)
    with pytest.raises(ValueError, match="no annotations"):
        pick_pair([], "k", 0)


def test_encode_pair_shapes(builder: SequenceBuilder) -> None:
    pair = encode_pair(builder, ["awe", "fear"], ["a tall peak", "dark shapes"], "k", 0)
    assert pair["input_ids"].shape == (2, 30) and pair["vad"].shape == (2, 30, 3)
    assert sorted(pair["emotion"].tolist()) == [1, 6] and bool(pair["has_pair"])
    assert pair["input_ids"].dtype == np.int64


def test_encoding_many_at_once_is_encoding_each(builder: SequenceBuilder) -> None:
    annotations = [
        ("awe", "a tall peak"),
        ("fear", " ".join(["mountain"] * 50)),  # truncated
        ("sadness", "it rains, doesn't it? the grey, gloomy sky"),
        ("something else", "x"),
    ]
    many = builder.encode_many(annotations)
    assert len(many) == len(annotations) and many[1].truncated
    for (emotion, text), got in zip(annotations, many, strict=True):
        one = builder.encode(emotion, text)
        for field in ("input_ids", "labels", "segment_ids", "vad", "vad_mask"):
            np.testing.assert_array_equal(getattr(got, field), getattr(one, field), field)
        assert (got.length, got.truncated) == (one.length, one.truncated)
    with pytest.raises(ValueError, match="nine emotions"):
        builder.encode_many([("awe", "a"), ("joy", "b")])
    assert builder.encode_many([]) == []


def test_a_batch_that_lost_all_its_rows_encodes_to_nothing() -> None:
    from sevlm.examples import ExampleConfig, encode_batch

    out = encode_batch({"key": [], "annotations": []}, ExampleConfig(), epoch=0)
    assert len(out["input_ids"]) == 0 and len(out["has_pair"]) == 0
