"""ArtEmis utterance preparation."""

import pytest

from sevlm.text import UtterancePrep, percentile_int, tokenize_utterance


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("It's GLOOMY, isn't it?", ["it", "is", "gloomy", "is", "not", "it"]),
        ("I can't; they'll won't", ["i", "cannot", "they", "will", "will", "not"]),
        ("The sky’s colours—so dark!", ["the", "sky", "s", "colours", "so", "dark"]),
        ("I'm sad...I'd cry", ["i", "am", "sad", "i", "would", "cry"]),
        ("  ", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize_utterance(text) == tokens


def test_verdicts() -> None:
    prep = UtterancePrep(min_tokens=5)
    assert prep.max_tokens([5, 6, 7, 8, 100]) == 100
    assert prep.max_tokens(list(range(1, 101))) == 95
    assert prep.verdict(4, 20) == "too_short"
    assert prep.verdict(21, 20) == "too_long"
    assert prep.verdict(20, 20) is None
    off = UtterancePrep(enabled=False)
    assert off.verdict(1, 2) is None and off.max_tokens([1, 2]) is None
    assert off.clean("It's  Sad!") == ["It's", "Sad!"]


def test_percentile_and_validation() -> None:
    assert percentile_int([3, 1, 2], 50) == 2
    with pytest.raises(ValueError, match="max_percentile"):
        UtterancePrep(max_percentile=0)
    with pytest.raises(ValueError, match="min_tokens"):
        UtterancePrep(min_tokens=-1)


def test_long_run_of_letters() -> None:
    # The contraction pattern is anchored at word starts: unanchored, it backtracked
    # quadratically and this one utterance took 25 s.
    assert tokenize_utterance("x" * 200_000) == ["x" * 200_000]
    assert tokenize_utterance("a" * 1000 + "'s") == ["a" * 1000, "s"]
