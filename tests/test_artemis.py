"""The ArtEmis reader: skip reasons, image modes, Unicode forms, quoting, splits, variants."""

from __future__ import annotations

import os
import random
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import csv_path, write_csv, write_image
from PIL import Image

from sevlm.artemis import (
    SKIP_REASONS,
    DataError,
    DataSource,
    iter_source_rows,
    load_artemis,
    read_csv_rows,
    split_paintings,
)
from sevlm.images import ImageTransform, load_rgb
from sevlm.text import UtterancePrep

GOOD = "the red strokes in this painting make me feel furious and tense"


def load(root: Path, rows: list[tuple], decode: bool = True, **kwargs):
    write_csv(csv_path(root), rows)
    return load_artemis(DataSource.resolve(data=str(root)), decode_images=decode, **kwargs)


def test_each_skip_reason_counted_once(artemis_dir: Path) -> None:
    images = artemis_dir / "wikiart"
    write_image(images / "Cubism" / "ok.jpg")
    write_image(images / "Cubism" / "also-ok.jpg")
    (images / "Cubism" / "broken.jpg").write_bytes(b"not an image at all")
    (images / "Cubism" / "truncated.jpg").write_bytes(
        (images / "Cubism" / "ok.jpg").read_bytes()[:60]
    )
    write_image(artemis_dir / "outside.jpg")
    rows = [
        ("Cubism", "ok", "anger", GOOD, 1),
        ("Cubism", "ok", "joy", GOOD, 1),  # unknown_emotion
        ("Cubism", "ok", "", GOOD, 1),  # unknown_emotion
        ("Cubism", "ok", "awe", "   ", 1),  # empty_utterance
        ("Cubism", "ok", "awe", "", 1),  # empty_utterance
        ("..", "outside", "awe", GOOD, 1),  # invalid_path
        ("Cubism", "../../outside", "awe", GOOD, 1),  # invalid_path
        ("/etc", "passwd", "awe", GOOD, 1),  # invalid_path
        ("", "ok", "awe", GOOD, 1),  # invalid_path (no style)
        ("Cubism", "nowhere", "awe", GOOD, 1),  # missing_image
        ("Baroque", "ok", "awe", GOOD, 1),  # missing_image (no such style)
        ("Cubism", "broken", "awe", GOOD, 1),  # unreadable_image
        ("Cubism", "broken", "fear", GOOD, 1),  # unreadable_image
        ("Cubism", "truncated", "fear", GOOD, 1),  # unreadable_image
        ("Cubism", "also-ok", " Fear ", GOOD, 1),
        ("Cubism", "ok", "awe", "it is dark", " gloomy and sad", 1),  # extra_fields
    ]
    report = load(artemis_dir, rows).report
    assert report.skipped == {
        "unbalanced_quote": 0,  # see test_rows_swallowed_by_an_unbalanced_quote_are_counted
        "extra_fields": 1,
        "unknown_emotion": 2,
        "empty_utterance": 2,
        "invalid_path": 4,
        "missing_image": 2,
        "unreadable_image": 3,
    }
    assert report.rows_total == len(rows)
    assert report.rows_kept == 2
    assert report.rows_kept + sum(report.skipped.values()) == report.rows_total
    assert report.paintings_kept == 2
    assert report.emotion_counts["anger"] == 1 and report.emotion_counts["fear"] == 1
    assert set(report.skipped) == set(SKIP_REASONS)
    assert report.skipped_examples["missing_image"][0]["painting"] == "nowhere"


def test_symlink_out_of_root_is_invalid_path(artemis_dir: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    write_image(elsewhere / "secret.jpg")
    (artemis_dir / "wikiart" / "Cubism").mkdir()
    os.symlink(elsewhere / "secret.jpg", artemis_dir / "wikiart" / "Cubism" / "secret.jpg")
    report = load(artemis_dir, [("Cubism", "secret", "awe", GOOD, 1)]).report
    assert report.skipped["invalid_path"] == 1 and report.rows_kept == 0


def test_without_decoding_unreadable_images_are_not_checked(artemis_dir: Path) -> None:
    (artemis_dir / "wikiart" / "Cubism").mkdir()
    (artemis_dir / "wikiart" / "Cubism" / "broken.jpg").write_bytes(b"junk")
    report = load(artemis_dir, [("Cubism", "broken", "awe", GOOD, 1)], decode=False).report
    assert report.rows_kept == 1 and not report.images_decoded


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "JPEG"),
        ("CMYK", "JPEG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("RGB", "PNG"),
        ("RGB", "JPEG"),
    ],
)
def test_image_modes_are_valid(artemis_dir: Path, mode: str, fmt: str) -> None:
    # PNG bytes are written behind the .jpg name: the bytes decide the format.
    path = write_image(artemis_dir / "wikiart" / "Realism" / "p.jpg", mode=mode, fmt=fmt)
    data = load(artemis_dir, [("Realism", "p", "awe", GOOD, 1)])
    assert data.report.rows_kept == 1
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (16, 16)
    if mode == "RGBA":  # fully transparent pixels are laid on white
        assert rgb.getpixel((0, 0)) == (255, 255, 255)
    pixels = ImageTransform(size=8)(rgb)
    assert pixels.shape == (3, 8, 8) and pixels.dtype == np.uint8


def test_a_long_strip_is_resized_only_where_it_is_cropped(tmp_path: Path, monkeypatch) -> None:
    """A 1 x 200000 PNG (under a KB) once made a 64 x 12.8M intermediate image (GBs)."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 200_000), (10, 200, 30)).save(strip)
    sizes, resize = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, size, *a, **k: (
        sizes.append(size), resize(im, size, *a, **k))[1])  # fmt: skip
    pixels = ImageTransform(size=64).load(strip)
    assert sizes and all(w * h <= 64 * 64 for w, h in sizes), sizes
    assert pixels.shape == (3, 64, 64) and (pixels[:, 32, 32] == (10, 200, 30)).all()
    sizes.clear()
    across = ImageTransform(size=64)(Image.new("RGB", (200_000, 1), (10, 200, 30)))
    assert sizes and all(w * h <= 64 * 64 for w, h in sizes), sizes
    assert (across == np.array((10, 200, 30))[:, None, None]).all()


@pytest.mark.parametrize(
    "width, height",
    [(64, 64), (96, 72), (72, 96), (114, 64), (320, 64), (24, 16), (64, 85), (56, 100), (49, 147)],
)
def test_resampling_the_crop_alone_gives_the_whole_images_pixels(width: int, height: int) -> None:
    """ImageTransform resamples only what the centre crop keeps, across then down: the pixels
    of resizing the whole image across, then down, then cropping, within two levels (Pillow
    takes the box's corners as float32). Portraits such as 64 x 85 are where a one-call box
    resize let Pillow go down first (12 levels apart)."""
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    scale = 48 / min(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    left, top = (new_w - 48) // 2, (new_h - 48) // 2
    bicubic = Image.Resampling.BICUBIC
    whole = image.resize((new_w, height), bicubic).resize((new_w, new_h), bicubic)
    expected = np.asarray(whole.crop((left, top, left + 48, top + 48))).transpose(2, 0, 1)
    got = ImageTransform(size=48)(image)
    assert got.shape == (3, 48, 48) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 2
    if width == height:
        assert np.array_equal(got, expected)


def test_a_fifo_named_like_an_image_is_unreadable_not_a_hang(artemis_dir: Path) -> None:
    fifo = artemis_dir / "wikiart" / "Realism" / "p.jpg"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        load_rgb(fifo)
    with pytest.raises(FileNotFoundError):  # missing stays missing, not unreadable
        load_rgb(fifo.with_name("gone.jpg"))
    data = load(artemis_dir, [("Realism", "p", "awe", GOOD, 1)])
    assert data.report.rows_kept == 0 and data.report.skipped["unreadable_image"] == 1


@pytest.mark.parametrize(("csv_form", "disk_form"), [("NFC", "NFD"), ("NFD", "NFC")])
def test_unicode_normal_forms_resolve(artemis_dir: Path, csv_form: str, disk_form: str) -> None:
    name, style = "paul-cézanne_still-life-with-apples", "Post_Impressionism_é"
    on_disk = artemis_dir / "wikiart" / unicodedata.normalize(disk_form, style)
    write_image(on_disk / (unicodedata.normalize(disk_form, name) + ".jpg"))
    in_csv = (unicodedata.normalize(csv_form, style), unicodedata.normalize(csv_form, name))
    assert not (artemis_dir / "wikiart" / in_csv[0] / (in_csv[1] + ".jpg")).exists()
    rows = [(*in_csv, "awe", GOOD, 2), (*in_csv, "fear", GOOD, 2)]
    data = load(artemis_dir, rows)
    assert data.report.rows_kept == 2 and data.report.paintings_kept == 1
    assert data.paintings[0].image.is_file()


def test_csv_quoting(artemis_dir: Path) -> None:
    write_image(artemis_dir / "wikiart" / "Baroque" / "a.jpg")
    tricky = 'it says "stop", and then,\non a new line, it is sad'
    rows = [("Baroque", "a", "sadness", tricky, 2), ("Baroque", "a", "awe", GOOD, 2)]
    data = load(artemis_dir, rows, prep=UtterancePrep(enabled=False))
    by_emotion = {a.emotion: a.utterance for a in data.paintings[0].annotations}
    assert by_emotion["sadness"] == 'it says "stop", and then, on a new line, it is sad'
    raw = list(read_csv_rows(csv_path(artemis_dir)))
    assert raw[0]["utterance"] == tricky and len(raw) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("art_style,painting,utterance\nA,b,c\n", "missing required column(s) emotion"),
        ("", "empty file"),
        ('{"json": "not csv"}\n', "missing required column(s)"),
    ],
)
def test_malformed_csv_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        list(read_csv_rows(path))
    assert str(path) in str(err.value)


def test_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "image.csv"
    write_image(path.with_suffix(".png"), fmt="PNG")
    path.write_bytes(path.with_suffix(".png").read_bytes())
    with pytest.raises(DataError, match=str(path)):
        list(read_csv_rows(path))


def test_missing_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open"):
        list(read_csv_rows(tmp_path / "nope.csv"))


def test_source_needs_images_and_annotations(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images root"):
        DataSource.resolve(csv=tmp_path / "a.csv")
    with pytest.raises(DataError, match="not a folder"):
        DataSource.resolve(data=str(tmp_path / "missing"))


def test_source_checks_the_images_root(tmp_path: Path, sample) -> None:
    """Every command resolves its data here: train and a search fail before Ray starts."""
    with pytest.raises(DataError, match=r"--images .*nope: no such folder"):
        DataSource.resolve(csv=sample.csv, images=tmp_path / "nope")
    with pytest.raises(DataError, match=r"--images .*: not a folder"):
        DataSource.resolve(data=str(sample.out), images=sample.csv)


def test_source_checks_the_lexicon(tmp_path: Path, sample) -> None:
    """Read up front, not first in the Ray workers of training or a search."""
    with pytest.raises(DataError, match=r"--lexicon: .*gone.txt: cannot read lexicon"):
        DataSource.resolve(data=str(sample.out), lexicon=tmp_path / "gone.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("calm\tlow\t0.1\t0.2\n")
    with pytest.raises(DataError, match=r"--lexicon: .*bad.txt:1: values are not numbers"):
        DataSource.resolve(data=str(sample.out), lexicon=bad)


def test_split_is_deterministic_and_independent_of_row_order(sample) -> None:
    source = DataSource.resolve(data=str(sample.out))
    first = {p.key: p.split for p in load_artemis(source).paintings}
    rows = list(read_csv_rows(sample.csv))
    random.Random(7).shuffle(rows)
    shuffled_dir = sample.out.parent / "shuffled"
    shuffled_dir.mkdir(exist_ok=True)
    shuffled = write_csv(
        shuffled_dir / "rows.csv",
        [
            tuple(r[c] for c in ("art_style", "painting", "emotion", "utterance", "repetition"))
            for r in rows
        ],
    )
    again = load_artemis(DataSource.resolve(csv=shuffled, images=sample.images))
    assert {p.key: p.split for p in again.paintings} == first
    other_seed = load_artemis(source, seed=1)
    assert {p.key: p.split for p in other_seed.paintings} != first


def test_split_fractions() -> None:
    keys = [f"s/p{i}" for i in range(20000)]
    splits = split_paintings(keys, seed=3)
    for name, fraction in zip(("train", "val", "test"), (0.85, 0.05, 0.10), strict=True):
        share = sum(v == name for v in splits.values()) / len(keys)
        assert abs(share - fraction) < 0.01, (name, share)
    assert split_paintings(reversed(keys), seed=3) == splits
    for n in (3, 5, 12):
        tiny = split_paintings([f"k{i}" for i in range(n)])
        assert set(tiny.values()) == {"train", "val", "test"}
    assert set(split_paintings(keys[:50], fractions=(1.0, 0.0, 0.0)).values()) == {"train"}
    with pytest.raises(ValueError, match="summing to 1"):
        split_paintings(keys, fractions=(0.5, 0.2, 0.2))


def test_split_of_a_painting_ignores_the_others() -> None:
    keys = [f"Cubism/p{i}" for i in range(500)]
    full = split_paintings(keys, seed=9)
    fewer = split_paintings(keys[:200] + keys[201:], seed=9)
    more = split_paintings([*keys, "Cubism/new"], seed=9)
    assert all(fewer[k] == full[k] for k in fewer)
    assert all(more[k] == full[k] for k in keys)


def test_split_is_the_same_whether_or_not_images_are_decoded(sample, tmp_path: Path) -> None:
    copy = tmp_path / "sample"
    shutil.copytree(sample.out, copy)
    source = DataSource.resolve(data=str(copy))
    before = {p.key: p.split for p in load_artemis(source).paintings}
    next(iter(load_artemis(source).paintings)).image.write_bytes(b"broken")
    decoded = load_artemis(source, decode_images=True)
    assert decoded.report.skipped["unreadable_image"] > 0
    assert all(before[p.key] == p.split for p in decoded.paintings)


def test_all_annotations_of_a_painting_share_a_split(sample) -> None:
    data = load_artemis(DataSource.resolve(data=str(sample.out)))
    assert data.report.splits == {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert sum(data.report.splits.values()) == data.report.paintings_kept == sample.paintings


def test_text_preparation_is_reported_apart_from_validity(artemis_dir: Path) -> None:
    for i in range(20):
        write_image(artemis_dir / "wikiart" / "Cubism" / f"p{i}.jpg")
    rows = [("Cubism", f"p{i}", "awe", " ".join(["word"] * (6 + i)), 1) for i in range(20)]
    rows.append(("Cubism", "p0", "fear", "Too short!", 1))
    data = load(artemis_dir, rows, split_fractions=(1.0, 0.0, 0.0))
    text = data.report.text
    assert data.report.rows_kept == 21 and sum(data.report.skipped.values()) == 0
    assert text["too_short"] == 1 and text["max_tokens"] == 24  # nearest-rank 95th of 6..25
    assert text["too_long"] == 1 and text["kept"] == 19
    short = next(a for a in data.paintings[0].annotations if a.emotion == "fear")
    assert short.text is None
    off = load(artemis_dir, rows, prep=UtterancePrep(enabled=False)).report.text
    assert off["kept"] == 21 and off["too_long"] == 0


def _contrastive(root: Path, n: int) -> Path:
    rows = [("Cubism", f"c{i}", "awe", f"{GOOD} {i}", 1, f"c{(i + 1) % n}") for i in range(n)]
    header = ("art_style", "painting", "emotion", "utterance", "repetition", "anchor_painting")
    return write_csv(root / "Contrastive.csv", rows, header)


def test_contrastive_and_combined_variants(artemis_dir: Path) -> None:
    for i in range(10):
        write_image(artemis_dir / "wikiart" / "Cubism" / f"c{i}.jpg")
        write_image(artemis_dir / "wikiart" / "Cubism" / f"v{i}.jpg")
    write_csv(csv_path(artemis_dir), [("Cubism", f"v{i}", "fear", GOOD, 3) for i in range(10)] * 3)
    _contrastive(artemis_dir, 8)
    root = str(artemis_dir)
    contrastive = load_artemis(DataSource.resolve(data=root, variant="contrastive")).report
    assert contrastive.rows_total == 8 and contrastive.emotion_counts["awe"] == 8
    combined = load_artemis(DataSource.resolve(data=root, variant="combined"), seed=5).report
    assert combined.rows_total == 16
    assert combined.emotion_counts == {**combined.emotion_counts, "awe": 8, "fear": 8}
    source = DataSource.resolve(data=root, variant="combined")
    v1_lines = lambda seed: [r["_line"] for r in iter_source_rows(source, seed)][8:]  # noqa: E731
    assert v1_lines(5) == v1_lines(5) and len(set(v1_lines(5))) == 8
    assert v1_lines(5) != v1_lines(6)  # 8 of 30 rows: equal draws have odds 1 in 5.8 million


def test_contrastive_file_needs_anchor_column(artemis_dir: Path) -> None:
    write_csv(artemis_dir / "Contrastive.csv", [("Cubism", "c", "awe", GOOD, 1)])
    source = DataSource.resolve(data=str(artemis_dir), variant="contrastive")
    with pytest.raises(DataError, match="anchor_painting"):
        load_artemis(source)


def test_hugging_face_dataset_saved_locally(sample, tmp_path: Path) -> None:
    import datasets

    rows = list(read_csv_rows(sample.csv))
    columns = ("art_style", "painting", "emotion", "utterance", "repetition")
    table = {c: [r[c] for r in rows] for c in columns}
    table["repetition"] = [int(x) for x in table["repetition"]]
    half = len(rows) // 2
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({k: v[:half] for k, v in table.items()}),
            "test": datasets.Dataset.from_dict({k: v[half:] for k, v in table.items()}),
        }
    )
    dd.save_to_disk(tmp_path / "hf")
    from_hf = load_artemis(DataSource.resolve(data=str(tmp_path / "hf"), images=sample.images))
    from_csv = load_artemis(DataSource.resolve(data=str(sample.out)))
    assert from_hf.report.rows_total == len(rows)
    assert from_hf.report.skipped == from_csv.report.skipped
    assert {p.key: p.split for p in from_hf.paintings} == {
        p.key: p.split for p in from_csv.paintings
    }


def test_hugging_face_dataset_missing_columns(tmp_path: Path, sample) -> None:
    import datasets

    datasets.Dataset.from_dict({"painting": ["a"]}).save_to_disk(tmp_path / "hf")
    with pytest.raises(DataError, match="missing required column"):
        load_artemis(DataSource.resolve(data=str(tmp_path / "hf"), images=sample.images))


def test_one_bad_row_costs_at_most_that_row(artemis_dir: Path) -> None:
    for i in range(3):
        write_image(artemis_dir / "wikiart" / "Cubism" / f"p{i}.jpg")
    rows = [("Cubism", "p0", "awe", GOOD, 1), ("Cubism", "p1", "awe", "x" * 200_000, 1)]
    write_csv(csv_path(artemis_dir), rows)
    with open(csv_path(artemis_dir), "ab") as f:
        f.write(b"Cubism,p2,fear,caf\xe9 colours make me feel uneasy and small,1\n")
    data = load_artemis(DataSource.resolve(data=str(artemis_dir)))
    report = data.report
    assert report.rows_total == 3 and report.rows_kept == 3
    assert report.text["too_long"] >= 1  # the 200k-character utterance is read, then dropped
    assert any("not UTF-8" in w and "line 4" in w for w in report.warnings)
    assert "warning:" in report.summary()


def test_rows_swallowed_by_an_unbalanced_quote_are_counted(artemis_dir: Path) -> None:
    write_image(artemis_dir / "wikiart" / "Cubism" / "p.jpg")
    lines = ["art_style,painting,emotion,utterance,repetition", "Cubism,p,awe,kept,1",
             'Cubism,p,awe,"it opens,1']  # fmt: skip
    lines += [f"Cubism,p,fear,row {i} swallowed,1" for i in range(6)]
    csv_path(artemis_dir).write_text("\n".join(lines) + "\n")
    report = load_artemis(DataSource.resolve(data=str(artemis_dir))).report
    assert report.rows_total == 8 and report.rows_kept == 1
    assert report.skipped["unbalanced_quote"] == 7  # the open record and the six it swallowed
    assert report.rows_kept + sum(report.skipped.values()) == report.rows_total
    assert report.skipped_examples["unbalanced_quote"][0]["line"] == 3
    assert any("unbalanced quote" in w and "line 3" in w for w in report.warnings)


def test_line_breaks_inside_an_explanation_are_kept(artemis_dir: Path) -> None:
    write_image(artemis_dir / "wikiart" / "Cubism" / "p.jpg")
    text = 'Cubism,p,awe,"the sky, vast\nand calm,\nmakes me small",1\n'
    csv_path(artemis_dir).write_text("art_style,painting,emotion,utterance,repetition\n" + text)
    data = load_artemis(DataSource.resolve(data=str(artemis_dir)))
    assert data.report.rows_kept == 1 and data.report.skipped["unbalanced_quote"] == 0
    assert data.paintings[0].annotations[0].utterance == "the sky, vast and calm, makes me small"


def test_duplicate_required_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("art_style,painting,emotion,utterance,emotion\nA,b,awe,text,x\n")
    with pytest.raises(DataError, match="emotion appear more than once"):
        list(read_csv_rows(path))


def test_unreadable_image_examples_have_line_numbers(artemis_dir: Path) -> None:
    (artemis_dir / "wikiart" / "Cubism").mkdir()
    (artemis_dir / "wikiart" / "Cubism" / "bad.jpg").write_bytes(b"junk")
    report = load(artemis_dir, [("Cubism", "bad", "awe", GOOD, 1)]).report
    assert report.skipped_examples["unreadable_image"] == [
        {"line": 2, "art_style": "Cubism", "painting": "bad", "emotion": "awe"}
    ]


def test_hugging_face_class_labels_and_numbers(tmp_path: Path, artemis_dir: Path) -> None:
    import datasets

    write_image(artemis_dir / "wikiart" / "Cubism" / "17.jpg")
    features = datasets.Features(
        {
            "art_style": datasets.Value("string"),
            "painting": datasets.Value("int64"),
            "emotion": datasets.ClassLabel(names=["awe", "fear"]),
            "utterance": datasets.Value("string"),
        }
    )
    table = {"art_style": ["Cubism"] * 2, "painting": [17, 17], "emotion": [0, 1],
             "utterance": [GOOD, GOOD]}  # fmt: skip
    datasets.Dataset.from_dict(table, features=features).save_to_disk(tmp_path / "hf")
    images = artemis_dir / "wikiart"
    report = load_artemis(DataSource.resolve(data=str(tmp_path / "hf"), images=images)).report
    assert report.rows_kept == 2
    assert report.emotion_counts["awe"] == 1 and report.emotion_counts["fear"] == 1
    with pytest.raises(DataError, match="--variant applies to CSV"):
        DataSource.resolve(data=str(tmp_path / "hf"), images=images, variant="combined")
