"""The plots of an evaluation report, written as PNG files.

Three figures: the confusion matrix of predicted against dominant emotion, accuracy per
dominant emotion, and the valence-arousal of generated against reference explanations (the
style of Figure 3 in the SEVLM paper, arXiv 2403.11150).

Figures are drawn with matplotlib's object API on an Agg canvas, so nothing here selects a
backend, opens a window or touches global matplotlib state (no pyplot, no rcParams). Every
file is written to a temporary name in its folder and then renamed over the target, so a
reader never sees a half-written PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sevlm.atomic import write_atomic
from sevlm.emotions import EMOTIONS, normalize_emotion

DPI = 150
# One fixed colour per emotion (tab10 without cyan): warm and green for the positive four,
# red, brown, purple and blue for the negative four, grey for "something else".
EMOTION_COLORS: dict[str, str] = {
    "amusement": "#ff7f0e",
    "awe": "#bcbd22",
    "contentment": "#2ca02c",
    "excitement": "#e377c2",
    "anger": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "sadness": "#1f77b4",
    "something else": "#7f7f7f",
}
_SERIES_COLORS = {"accuracy": "#4c72b0", "alignment": "#dd8452"}

_VA_TICKS = (-1.0, -0.5, 0.0, 0.5, 1.0)

Point = tuple[float, float]


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]],
    path: Path | str,
    *,
    labels: Sequence[str] = EMOTIONS,
    predicted_labels: Sequence[str] | None = None,
    title: str = "Emotion: predicted vs dominant",
) -> Path:
    """Draw ``matrix[true][predicted]`` counts, coloured by each row's share; returns the path.

    Rows are the dominant emotion (``labels``), columns the prediction (``predicted_labels``,
    by default ``labels``; it may add a column such as "unknown" for no emotion named).
    Colouring by row share keeps rare emotions readable; an all-zero row stays blank.
    """
    columns = list(labels if predicted_labels is None else predicted_labels)
    counts = _count_matrix(matrix, len(labels), len(columns))
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)

    fig = Figure(figsize=(1.0 + 0.75 * len(columns), 1.6 + 0.5 * len(labels)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if share[row, col] > 0.5 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    if len(columns) > len(labels):
        ax.axvline(len(labels) - 0.5, color="0.3", linewidth=1.0)
    row_names = [f"{label} (n={total})" for label, total in zip(labels, totals[:, 0], strict=True)]
    ax.set_yticks(range(len(labels)), row_names)
    ax.set_xticks(range(len(columns)), columns, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_ylabel("dominant emotion")
    ax.set_xlabel("predicted")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the row (dominant emotion)")
    return _save(fig, path)


def per_emotion_png(
    per_emotion: Mapping[str, Mapping[str, float | int | None]],
    path: Path | str,
    *,
    title: str = "Accuracy per dominant emotion",
) -> Path:
    """Bar per emotion of ``"accuracy"`` (and ``"alignment"`` when given), annotated with n.

    ``per_emotion`` holds every emotion of ``EMOTIONS``, each with ``"accuracy"`` (a share in
    [0, 1], or None when no image has that dominant emotion) and ``"images"`` (a count).
    When any entry also has ``"alignment"``, the two series are drawn as grouped bars.
    """
    _check_per_emotion(per_emotion)
    series = ["accuracy"]
    if any("alignment" in entry for entry in per_emotion.values()):
        series.append("alignment")
    fig = Figure(
        figsize=(7.5, 1.4 + 0.5 * len(EMOTIONS) * (1 + len(series)) / 2), layout="constrained"
    )
    ax = fig.add_subplot()
    _bars(ax, per_emotion, series)
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.25)
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    ax.set_xlabel("share of images" if len(series) > 1 else "accuracy")
    ax.set_ylabel("dominant emotion")
    ax.set_title(title)
    if len(series) > 1:
        handles = [_handle(name, _SERIES_COLORS[name], marker="s") for name in series]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(series), fontsize=8)
    return _save(fig, path)


def valence_arousal_png(
    generated: Sequence[tuple[float, float] | None],
    references: Sequence[tuple[float, float] | None],
    emotions: Sequence[str],
    path: Path | str,
    *,
    title: str = "Valence-arousal of explanations",
) -> Path:
    """Scatter the (valence, arousal) of reference and generated explanations, side by side.

    One entry per image in each sequence: the mean VA of its generated explanation, of its
    reference explanations, and its dominant emotion (which sets the colour). None marks an
    explanation without a lexicon word: it is skipped, and each panel says how many were.
    Large outlined markers are the per-emotion means.
    """
    if not len(generated) == len(references) == len(emotions):
        raise ValueError(
            f"generated, references and emotions differ in length: "
            f"{len(generated)}, {len(references)}, {len(emotions)}"
        )
    canonical = [_canonical_emotion(emotion) for emotion in emotions]
    fig = Figure(figsize=(11.0, 5.4), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, name, points in zip(
        axes, ("references", "generated"), (references, generated), strict=True
    ):
        _va_panel(ax, name, _checked_points(points, name), canonical)
    present = [emotion for emotion in EMOTIONS if emotion in canonical]
    handles = [_handle(emotion, EMOTION_COLORS[emotion]) for emotion in present]
    fig.legend(
        handles=[*handles, _handle("mean per emotion", "white", edge="black")],
        loc="outside right upper",
        title="dominant emotion",
        fontsize=8,
    )
    fig.suptitle(title)
    return _save(fig, path)


def _count_matrix(matrix: Sequence[Sequence[int]], rows: int, columns: int) -> np.ndarray:
    """The matrix as an integer array, checked to be ``rows`` x ``columns`` of counts >= 0."""
    if len(matrix) != rows or any(len(row) != columns for row in matrix):
        shape = f"{len(matrix)} rows of lengths {sorted({len(row) for row in matrix})}"
        raise ValueError(
            f"confusion matrix must be {rows}x{columns} (labels x predicted_labels), got {shape}"
        )
    counts = np.asarray(matrix, dtype=float).reshape(rows, columns)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts % 1):
        raise ValueError("confusion matrix entries must be non-negative whole counts")
    return counts.astype(np.int64)


def _check_per_emotion(per_emotion: Mapping[str, Mapping[str, float | int | None]]) -> None:
    """Raise ValueError unless ``per_emotion`` holds exactly the nine emotions, well formed."""
    if set(per_emotion) != set(EMOTIONS):
        missing = [e for e in EMOTIONS if e not in per_emotion]
        extra = sorted(set(per_emotion) - set(EMOTIONS))
        raise ValueError(
            f"per_emotion must hold the nine emotions: missing {missing}, extra {extra}"
        )
    for emotion, entry in per_emotion.items():
        images = entry.get("images")
        if not isinstance(images, Integral) or isinstance(images, bool) or images < 0:
            raise ValueError(f"per_emotion[{emotion!r}]['images'] must be a count, got {images!r}")
        for name in ("accuracy", "alignment"):
            value = entry.get(name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"per_emotion[{emotion!r}][{name!r}] must be in [0, 1], got {value!r}"
                )


def _bars(
    ax: Axes, per_emotion: Mapping[str, Mapping[str, float | int | None]], series: list[str]
) -> None:
    """Grouped horizontal bars, one group per emotion, each bar labelled with its share."""
    height = 0.8 / len(series)
    for index, name in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * height
        for row, emotion in enumerate(EMOTIONS):
            value = per_emotion[emotion].get(name)
            ax.barh(row + offset, value or 0.0, height=height, color=_SERIES_COLORS[name])
            note = "" if value is None else f"{value:.0%}"
            if name == "accuracy":
                note = f"{note}  n={per_emotion[emotion]['images']}".strip()
            ax.text((value or 0.0) + 0.01, row + offset, note, va="center", fontsize=8)


def _canonical_emotion(label: str) -> str:
    """The canonical name of one of the nine emotions; ValueError for anything else."""
    emotion = normalize_emotion(label)
    if emotion is None:
        raise ValueError(f"not one of the nine emotions: {label!r}")
    return emotion


def _checked_points(points: Sequence[Point | None], name: str) -> list[Point | None]:
    """The points as float pairs (None kept); ValueError for anything not a finite pair."""
    checked: list[Point | None] = []
    for index, point in enumerate(points):
        if point is None:
            checked.append(None)
            continue
        if len(point) != 2 or not all(math.isfinite(float(v)) for v in point):
            raise ValueError(f"{name}[{index}] must be a finite (valence, arousal), got {point!r}")
        checked.append((float(point[0]), float(point[1])))
    return checked


def _va_panel(ax: Axes, name: str, points: list[Point | None], emotions: list[str]) -> None:
    """One valence-arousal panel: points and per-emotion means, coloured by emotion."""
    kept = [
        (point, emotion)
        for point, emotion in zip(points, emotions, strict=True)
        if point is not None
    ]
    for emotion in EMOTIONS:
        xy = np.array([point for point, e in kept if e == emotion]).reshape(-1, 2)
        if not len(xy):
            continue
        colour = EMOTION_COLORS[emotion]
        ax.scatter(xy[:, 0], xy[:, 1], s=12, color=colour, alpha=0.55, linewidths=0)
        mean = xy.mean(axis=0)
        ax.scatter(*mean, s=110, color=colour, edgecolors="black", linewidths=1.0, zorder=3)
    ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)
    ax.axvline(0.0, color="0.6", linewidth=0.6, zorder=0)
    ax.set_xlim(-1.0, 1.0)
    ax.set_ylim(-1.0, 1.0)
    ax.set_xticks(_VA_TICKS)
    ax.set_yticks(_VA_TICKS)
    ax.set_aspect("equal")
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    skipped = len(points) - len(kept)
    ax.set_title(f"{name}\n{len(kept)} plotted, {skipped} skipped (no lexicon word)", fontsize=10)


def _handle(label: str, colour: str, *, marker: str = "o", edge: str | None = None) -> Line2D:
    """A legend entry: one marker of ``colour`` (outlined in ``edge``), no line."""
    return Line2D(
        [],
        [],
        linestyle="",
        marker=marker,
        markersize=8,
        color=colour,
        markeredgecolor=edge or colour,
        label=label,
    )


def _save(fig: Figure, path: Path | str) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temp file in the folder, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    return write_atomic(target, lambda f: fig.savefig(f, format="png", dpi=DPI))
