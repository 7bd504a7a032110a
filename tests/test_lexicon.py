"""NRC-VAD layouts, scaling to [-1, 1], and the tokenizer-aware lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sevlm.lexicon import LexiconError, VADLexicon, read_lexicon
from sevlm.sample import sample_lexicon_path
from sevlm.tokenizer import load_tokenizer


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lexicon.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text",
    [
        "Word\tValence\tArousal\tDominance\naaaah\t0.479\t0.606\t0.291\nzeal\t1.000\t0.800\t0.500\n",
        "aaaah\t0.479\t0.606\t0.291\nzeal\t1.000\t0.800\t0.500\n",  # v1 without header
        "# a comment\nWord\tValence\tArousal\tDominance\naaaah\t0.479\t0.606\t0.291\n"
        "zeal\t1\t0.8\t0.5\n",
    ],
)
def test_v1_unit_scale_is_mapped_to_bipolar(tmp_path: Path, text: str) -> None:
    lexicon = read_lexicon(write(tmp_path, text))
    assert lexicon.get("aaaah") == pytest.approx((-0.042, 0.212, -0.418))
    assert lexicon.get("ZEAL") == pytest.approx((1.0, 0.6, 0.0))
    assert len(lexicon) == 2


def test_v1_bipolar_file_is_kept(tmp_path: Path) -> None:
    text = "Word\tValence\tArousal\tDominance\nabandon\t-0.688\t-0.1\t-0.5\nzeal\t0.9\t0.6\t0.2\n"
    lexicon = read_lexicon(write(tmp_path, text))
    assert lexicon.get("abandon") == pytest.approx((-0.688, -0.1, -0.5))
    assert lexicon.get("zeal") == pytest.approx((0.9, 0.6, 0.2))


def test_doubtful_files_are_read_with_a_warning(tmp_path: Path, caplog) -> None:
    """A word given twice with other values keeps the first; one stray negative among many
    [0, 1] values turns the whole file bipolar: both are said, not silent."""
    text = "zeal\t0.9\t0.6\t0.2\nZeal\t0.1\t0.1\t0.1\nzeal\t0.9\t0.6\t0.2\n"
    assert read_lexicon(write(tmp_path, text)).get("zeal") == pytest.approx((0.8, 0.2, -0.6))
    assert "1 word(s) appear again with other values; the first is kept ('zeal')" in caplog.text
    caplog.clear()
    rows = "".join(f"w{i}\t0.5\t0.5\t0.5\n" for i in range(40)) + "bad\t-0.1\t0.5\t0.5\n"
    assert read_lexicon(write(tmp_path, rows)).get("w0") == pytest.approx((0.5, 0.5, 0.5))
    assert "1 of 123 values are negative, so the whole lexicon is read as [-1, 1]" in caplog.text
    caplog.clear()
    read_lexicon(write(tmp_path, "abandon\t-0.688\t-0.1\t-0.5\nzeal\t0.9\t0.6\t0.2\n"))
    assert caplog.text == ""  # a bipolar file: half its values negative


def test_v2_header_means_bipolar_even_without_negatives(tmp_path: Path) -> None:
    text = "term\tvalence\tarousal\tdominance\nzeal\t0.9\t0.6\t0.2\nice cream\t0.8\t0.3\t0.1\n"
    lexicon = read_lexicon(write(tmp_path, text))
    assert lexicon.get("zeal") == pytest.approx((0.9, 0.6, 0.2))
    assert lexicon.get("ice cream") == pytest.approx((0.8, 0.3, 0.1))


def test_forced_scale(tmp_path: Path) -> None:
    path = write(tmp_path, "zeal\t0.5\t0.5\t1.0\n")
    assert read_lexicon(path, scale="bipolar").get("zeal") == pytest.approx((0.5, 0.5, 1.0))
    assert read_lexicon(path, scale="unit").get("zeal") == pytest.approx((0.0, 0.0, 1.0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("zeal\t0.5\tx\t1.0\n", r"lexicon.txt:1: values are not numbers"),
        ("Word\tValence\tArousal\tDominance\nzeal\t0.5\n", r"lexicon.txt:2: expected a word"),
        ("zeal\t1.5\t0.5\t0.5\n", "outside"),
        ("# only a comment\n", "no entries"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(LexiconError, match=message):
        read_lexicon(write(tmp_path, text))


def test_packaged_sample_lexicon() -> None:
    lexicon = read_lexicon(sample_lexicon_path())
    assert len(lexicon) > 100
    assert "illustrative" in sample_lexicon_path().read_text().splitlines()[0].lower()
    values = np.asarray(list(lexicon.table.values()))
    assert values.min() >= -1 and values.max() <= 1 and values.min() < 0


def test_sub_tokens_share_their_word_vad() -> None:
    tokenizer = load_tokenizer()
    lexicon = VADLexicon({"unfathomable": (-0.2, 0.5, -0.3), "sad": (-0.8, -0.4, -0.5)})
    text = " an unfathomable, sad sky"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    vad, known = lexicon.token_vad(text, enc["offset_mapping"])
    word_tokens = [i for i, t in enumerate(tokens) if t.lstrip("Ġ") in ("unf", "ath", "om", "able")]
    assert len(word_tokens) >= 2, tokens  # the word really is split
    for i in word_tokens:
        assert known[i] and vad[i] == pytest.approx((-0.2, 0.5, -0.3))
    sad = tokens.index("Ġsad")
    assert known[sad] and vad[sad] == pytest.approx((-0.8, -0.4, -0.5))
    for i in (tokens.index("Ġan"), tokens.index(","), tokens.index("Ġsky")):
        assert not known[i] and not vad[i].any()


def test_empty_spans_get_zeros() -> None:
    lexicon = VADLexicon({"sad": (-0.8, -0.4, -0.5)})
    vad, known = lexicon.token_vad("sad", [(0, 0), (0, 3), (3, 3)])
    assert known.tolist() == [False, True, False]
    assert not vad[0].any() and not vad[2].any()


def test_text_vad_mean() -> None:
    lexicon = VADLexicon({"sad": (-0.8, -0.4, -0.6), "calm": (0.6, -0.6, 0.2)})
    assert lexicon.text_vad("so sad and calm") == pytest.approx((-0.1, -0.5, -0.2))
    assert lexicon.text_vad("nothing known") is None


def test_coverage() -> None:
    lexicon = VADLexicon({"sad": (-0.8, -0.4, -0.6)})
    assert lexicon.coverage(["so sad", "sad sad day"]) == {"words": 5, "known": 3, "share": 0.6}
    assert lexicon.coverage([])["share"] == 0.0


def test_bom_trailing_tabs_and_a_word_named_term(tmp_path: Path) -> None:
    text = "\ufeffWord\tValence\tArousal\tDominance\nterm\t1\t0.8\t0.5\t\nzeal\t0.5\t0.5\t0.5\n"
    lexicon = read_lexicon(write(tmp_path, text))
    assert lexicon.get("term") == pytest.approx((1.0, 0.6, 0.0))  # a word, not a v2 header
    assert len(lexicon) == 2
    headerless = read_lexicon(write(tmp_path, "term\t1\t0.8\t0.5\n"))
    assert headerless.get("term") == pytest.approx((1.0, 0.6, 0.0))
