"""The evaluation plots: PNGs written atomically, inputs checked, matplotlib left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

from sevlm.emotions import EMOTIONS
from sevlm.plots import confusion_matrix_png, per_emotion_png, valence_arousal_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min_width <= width <= 4000
    assert min_height <= height <= 4000


def diagonal(columns: int = 9) -> list[list[int]]:
    return [[5 if i == j else i + j for j in range(columns)] for i in range(len(EMOTIONS))]


def per_emotion(alignment: bool = False) -> dict[str, dict[str, float | int | None]]:
    table: dict[str, dict[str, float | int | None]] = {
        e: {"accuracy": i / 10, "images": 10 + i} for i, e in enumerate(EMOTIONS)
    }
    table["disgust"] = {"accuracy": None, "images": 0}
    if alignment:
        for i, entry in enumerate(table.values()):
            entry["alignment"] = None if entry["accuracy"] is None else 1 - i / 10
    return table


def va_inputs(n: int = 18) -> tuple[list, list, list[str]]:
    emotions = [EMOTIONS[i % len(EMOTIONS)] for i in range(n)]
    generated = [None if i % 5 == 0 else (i / n - 0.5, 0.3) for i in range(n)]
    references = [None if i % 7 == 0 else (0.2, 0.5 - i / n) for i in range(n)]
    return generated, references, emotions


def test_confusion_matrix_writes_png_and_creates_folders(tmp_path: Path) -> None:
    target = tmp_path / "report" / "plots" / "confusion.png"
    assert confusion_matrix_png(diagonal(), str(target)) == target
    assert_png(target)


@pytest.mark.filterwarnings("error")  # 0/0 on the empty row would warn
def test_confusion_matrix_with_unknown_column_and_empty_row(tmp_path: Path) -> None:
    matrix = diagonal(10)
    matrix[3] = [0] * 10  # no image has this dominant emotion: no division by zero
    target = confusion_matrix_png(
        matrix, tmp_path / "c.png", predicted_labels=[*EMOTIONS, "unknown"], title="9x10"
    )
    assert_png(target)


@pytest.mark.parametrize(
    ("matrix", "predicted_labels"),
    [
        (diagonal(10), None),  # an "unknown" column without its label
        (diagonal(9), [*EMOTIONS, "unknown"]),
        (diagonal(9)[:8], None),
        ([*diagonal(9)[:8], [1] * 8], None),  # ragged
        ([[-1] * 9, *diagonal(9)[1:]], None),
        ([[0.5] * 9, *diagonal(9)[1:]], None),
    ],
)
def test_confusion_matrix_rejects_inconsistent_shape(
    tmp_path: Path, matrix: list[list[int]], predicted_labels: list[str] | None
) -> None:
    with pytest.raises(ValueError, match="confusion matrix"):
        confusion_matrix_png(matrix, tmp_path / "c.png", predicted_labels=predicted_labels)
    assert list(tmp_path.iterdir()) == []


def test_per_emotion_writes_png_with_grouped_bars_for_alignment(tmp_path: Path) -> None:
    single = per_emotion_png(per_emotion(), tmp_path / "single.png")
    grouped = per_emotion_png(per_emotion(alignment=True), tmp_path / "grouped.png")
    assert_png(single)
    assert_png(grouped)
    with Image.open(single) as a, Image.open(grouped) as b:
        assert b.size[1] > a.size[1]  # two bars per emotion need more room


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.pop("fear"),
        lambda t: t.update(joy={"accuracy": 0.5, "images": 2}),
        lambda t: t["awe"].update(accuracy=1.5),
        lambda t: t["awe"].update(images=-1),
        lambda t: t["awe"].pop("images"),
    ],
    ids=["missing", "extra", "accuracy-range", "negative-count", "no-count"],
)
def test_per_emotion_rejects_inconsistent_input(tmp_path: Path, change) -> None:
    table = per_emotion()
    change(table)
    with pytest.raises(ValueError, match="per_emotion"):
        per_emotion_png(table, tmp_path / "p.png")


def test_valence_arousal_skips_none_points(tmp_path: Path) -> None:
    generated, references, emotions = va_inputs()
    target = valence_arousal_png(generated, references, emotions, tmp_path / "va.png")
    assert_png(target, min_width=800)


def test_valence_arousal_all_none(tmp_path: Path) -> None:
    target = valence_arousal_png([None, None], [None, None], ["awe", "fear"], tmp_path / "va.png")
    assert_png(target, min_width=800)


@pytest.mark.parametrize(
    "change",
    [
        lambda g, r, e: g.pop(),
        lambda g, r, e: e.append("awe"),
        lambda g, r, e: e.__setitem__(0, "joy"),
        lambda g, r, e: g.__setitem__(1, (0.1, 0.2, 0.3)),
        lambda g, r, e: r.__setitem__(1, (float("nan"), 0.2)),
    ],
    ids=["short-generated", "long-emotions", "unknown-emotion", "triple", "nan"],
)
def test_valence_arousal_rejects_inconsistent_input(tmp_path: Path, change) -> None:
    generated, references, emotions = va_inputs()
    change(generated, references, emotions)
    with pytest.raises(ValueError):
        valence_arousal_png(generated, references, emotions, tmp_path / "va.png")


def test_overwrites_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "c.png"
    target.write_bytes(b"old")
    confusion_matrix_png(diagonal(), target)
    per_emotion_png(per_emotion(), tmp_path / "p.png")
    valence_arousal_png(*va_inputs(), tmp_path / "va.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "p.png", "va.png"]
    assert_png(target)


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "taken.png").mkdir()  # the rename onto a folder fails after the PNG is drawn
    with pytest.raises(OSError):
        confusion_matrix_png(diagonal(), tmp_path / "taken.png")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"]


def test_global_matplotlib_state_unchanged(tmp_path: Path) -> None:
    backend = matplotlib.get_backend(auto_select=False)  # reading it must not resolve it
    params = matplotlib.rcParams.copy()
    confusion_matrix_png(diagonal(), tmp_path / "c.png")
    per_emotion_png(per_emotion(alignment=True), tmp_path / "p.png")
    valence_arousal_png(*va_inputs(), tmp_path / "va.png")
    assert matplotlib.get_backend(auto_select=False) == backend
    assert matplotlib.rcParams.copy() == params


def test_fresh_process_keeps_backend_and_never_imports_pyplot(tmp_path: Path) -> None:
    script = (
        "import sys, matplotlib\n"
        "backend, params = matplotlib.get_backend(auto_select=False), matplotlib.rcParams.copy()\n"
        "from sevlm.plots import confusion_matrix_png\n"
        "confusion_matrix_png([[1] * 9] * 9, sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "assert matplotlib.get_backend(auto_select=False) == backend, 'backend changed'\n"
        "assert matplotlib.rcParams.copy() == params, 'rcParams changed'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c.png")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert_png(tmp_path / "c.png")
