"""The embedded sample: ArtEmis layout, determinism, and that it can be learned from."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sevlm.artemis import IMAGES_DIR_NAME, LEXICON_NAME, V1_CSV_NAME
from sevlm.emotions import EMOTIONS, NEGATIVE, POSITIVE
from sevlm.sample import (
    DEFAULT_PAINTINGS,
    SampleSummary,
    sample_lexicon_path,
    write_sample,
)

HEADER = ["art_style", "painting", "emotion", "utterance", "repetition"]
Key = tuple[str, str]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return write_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def rows(sample: SampleSummary) -> list[dict[str, str]]:
    with sample.csv.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def by_painting(rows: list[dict[str, str]]) -> dict[Key, list[dict[str, str]]]:
    groups: dict[Key, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        groups[row["art_style"], row["painting"]].append(row)
    return groups


def read_lexicon(path: Path) -> dict[str, tuple[float, float, float]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    body = [line for line in lines if not line.startswith("#")]
    assert body[0] == "Word\tValence\tArousal\tDominance"
    lexicon = {}
    for line in body[1:]:
        word, *values = line.split("\t")
        lexicon[word] = (float(values[0]), float(values[1]), float(values[2]))
    return lexicon


def image_path(sample: SampleSummary, style: str, painting: str) -> Path:
    return sample.images / style / f"{unicodedata.normalize('NFD', painting)}.jpg"


def dominant(annotations: list[dict[str, str]]) -> str:
    emotion, votes = Counter(row["emotion"] for row in annotations).most_common(1)[0]
    assert votes > len(annotations) / 2
    return emotion


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# --- layout --------------------------------------------------------------------------------


def test_summary_and_file_names(sample: SampleSummary, by_painting: dict) -> None:
    assert sample.csv == sample.out / V1_CSV_NAME
    assert sample.images == sample.out / IMAGES_DIR_NAME
    assert sample.lexicon == sample.out / LEXICON_NAME
    assert sample.paintings == DEFAULT_PAINTINGS == len(by_painting)
    assert sample.rows == sum(len(group) for group in by_painting.values())


def test_csv_header_and_values(sample: SampleSummary, rows: list[dict[str, str]]) -> None:
    with sample.csv.open(newline="", encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == HEADER
    for row in rows:
        assert row["emotion"] in EMOTIONS
        assert row["painting"] == unicodedata.normalize("NFC", row["painting"])
        assert re.fullmatch(r"[^_A-Z\s]+_[a-z-]+-\d{4}", row["painting"]), row["painting"]
        assert 6 <= len(row["utterance"].split()) <= 18, row["utterance"]
    assert any("," in row["utterance"] for row in rows)
    assert any('"' in row["utterance"] for row in rows)
    assert any("'" in row["utterance"] for row in rows)


def test_repetition_is_the_annotation_count(by_painting: dict) -> None:
    for group in by_painting.values():
        assert 4 <= len(group) <= 6
        assert {int(row["repetition"]) for row in group} == {len(group)}


def test_every_image_is_an_rgb_jpeg_at_its_path(sample: SampleSummary, by_painting: dict) -> None:
    for style, painting in by_painting:
        path = image_path(sample, style, painting)
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (96, 96))
    on_disk = list(sample.images.glob("*/*.jpg"))
    assert len(on_disk) == len(by_painting)


def test_accented_names_are_nfc_in_csv_and_nfd_on_disk(
    sample: SampleSummary, by_painting: dict
) -> None:
    accented = [(s, p) for s, p in by_painting if p != unicodedata.normalize("NFD", p)]
    assert 1 <= len(accented) <= 0.1 * len(by_painting)
    for style, painting in accented:
        assert not (sample.images / style / f"{painting}.jpg").exists()
        assert image_path(sample, style, painting).exists()


def test_lexicon_is_copied_and_parseable(sample: SampleSummary) -> None:
    assert sample.lexicon.read_bytes() == sample_lexicon_path().read_bytes()
    text = sample.lexicon.read_text(encoding="utf-8")
    assert text.startswith("#") and "ILLUSTRATIVE" in text.splitlines()[0]
    lexicon = read_lexicon(sample.lexicon)
    assert 100 <= len(lexicon) <= 200
    assert list(lexicon) == sorted(lexicon)
    assert all(re.fullmatch(r"[a-z]+", word) for word in lexicon)
    assert all(0.0 <= v <= 1.0 for vad in lexicon.values() for v in vad)
    assert set(EMOTIONS[:8]) <= set(lexicon)
    assert lexicon["furious"][0] < 0.3 < 0.7 < lexicon["furious"][1]
    assert lexicon["calm"][1] < 0.3 < 0.7 < lexicon["calm"][0]


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = write_sample(tmp_path / "a", paintings=30, seed=3)
    second = write_sample(tmp_path / "b", paintings=30, seed=3)
    other = write_sample(tmp_path / "c", paintings=30, seed=4)
    assert first.csv.read_bytes() == second.csv.read_bytes()
    assert first.csv.read_bytes() != other.csv.read_bytes()
    images = sorted(first.images.glob("*/*.jpg"))[:5]
    assert len(images) == 5
    for path in images:
        twin = second.images / path.relative_to(first.images)
        assert path.read_bytes() == twin.read_bytes()


def test_rewriting_into_the_same_folder_works(tmp_path: Path) -> None:
    first = write_sample(tmp_path, paintings=12)
    before = first.csv.read_bytes()
    assert write_sample(tmp_path, paintings=12).csv.read_bytes() == before


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"paintings": 5}, "paintings"), ({"image_size": 8}, "image_size")]
)
def test_rejects_too_small(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_sample(tmp_path, **kwargs)


def test_image_size_is_honoured(tmp_path: Path) -> None:
    summary = write_sample(tmp_path, paintings=10, image_size=40)
    with Image.open(next(summary.images.glob("*/*.jpg"))) as image:
        assert image.size == (40, 40)


# --- learnability --------------------------------------------------------------------------


def test_emotion_mix(by_painting: dict) -> None:
    dominants = Counter(dominant(group) for group in by_painting.values())
    assert set(dominants) == set(EMOTIONS)
    assert max(dominants.values()) <= 2 * min(dominants.values())
    mixed = sum(len({row["emotion"] for row in group}) >= 2 for group in by_painting.values())
    assert 0.8 <= mixed / len(by_painting) < 1.0


def features(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((24, 24)), dtype=np.float64) / 255.0
    grey = pixels.mean(axis=2)
    edges = [np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()]
    return np.concatenate([pixels.mean(axis=(0, 1)), pixels.std(axis=(0, 1)), edges])


def test_dominant_emotion_is_visible(sample: SampleSummary, by_painting: dict) -> None:
    keys = sorted(by_painting)
    x = np.stack([features(image_path(sample, *key)) for key in keys])
    y = np.array([EMOTIONS.index(dominant(by_painting[key])) for key in keys])
    train, test = np.arange(len(keys)) % 2 == 0, np.arange(len(keys)) % 2 == 1
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
    x = (x - mean) / std
    centroids = np.stack([x[train & (y == k)].mean(axis=0) for k in range(len(EMOTIONS))])
    distances = ((x[test, None, :] - centroids[None]) ** 2).sum(axis=2)
    accuracy = (distances.argmin(axis=1) == y[test]).mean()
    assert accuracy >= 0.6, accuracy


def test_explanations_carry_emotion_words(sample: SampleSummary, rows: list) -> None:
    lexicon = read_lexicon(sample.lexicon)
    valence: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        known = [lexicon[word][0] for word in words(row["utterance"]) if word in lexicon]
        assert known, row["utterance"]
        valence[row["emotion"]].append(float(np.mean(known)))
    positive = np.mean([v for e in POSITIVE for v in valence[e]])
    negative = np.mean([v for e in NEGATIVE for v in valence[e]])
    assert positive > negative + 0.2


def test_explanations_vary(rows: list) -> None:
    assert len({row["utterance"] for row in rows}) > 0.8 * len(rows)
