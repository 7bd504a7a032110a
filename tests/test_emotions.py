import pytest

from sevlm.emotions import EMOTIONS, normalize_emotion


def test_canonical_order() -> None:
    assert EMOTIONS == (
        "amusement", "awe", "contentment", "excitement",
        "anger", "disgust", "fear", "sadness", "something else",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (" Sadness ", "sadness"),
        ("SOMETHING ELSE", "something else"),
        ("something  else", "something else"),
        ("\tawe\n", "awe"),
        ("Awe", "awe"),
        ("joy", None),
        ("", None),
        ("somethingelse", None),
        (None, None),
        (3, None),
    ],
)
def test_normalize(label: object, expected: str | None) -> None:
    assert normalize_emotion(label) == expected
