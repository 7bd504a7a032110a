"""ArtEmis: read the annotation files, check every row, group by painting, split.

A row is kept, or skipped for exactly one reason, checked in this order: ``unbalanced_quote``
(a quoted field runs on over lines that read as rows: the record and each row it swallowed
are counted), ``extra_fields`` (more fields than the header: an unquoted comma has cut its
utterance), ``unknown_emotion``, ``empty_utterance``, ``invalid_path`` (``art_style`` or
``painting`` would leave the images root), ``missing_image``, ``unreadable_image`` (only when
images are decoded). Skips are counted, never fatal; a file that is not an ArtEmis CSV at all
is a :class:`DataError`.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import logging
import os
import random
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from sevlm.emotions import EMOTIONS, normalize_emotion
from sevlm.images import check_image
from sevlm.lexicon import LexiconError, read_lexicon
from sevlm.text import UtterancePrep

log = logging.getLogger(__name__)

V1_CSV_NAME = "artemis_dataset_release_v0.csv"
CONTRASTIVE_CSV_NAME = "Contrastive.csv"
IMAGES_DIR_NAME = "wikiart"
LEXICON_NAME = "NRC-VAD-Lexicon.txt"
IMAGE_EXTENSION = ".jpg"

REQUIRED_COLUMNS = ("art_style", "painting", "emotion", "utterance")
"""Columns a v1.0 file must have (``repetition`` is read when present, never needed)."""
CONTRASTIVE_COLUMNS = (*REQUIRED_COLUMNS, "anchor_painting")
SKIP_REASONS = (
    "unbalanced_quote",
    "extra_fields",
    "unknown_emotion",
    "empty_utterance",
    "invalid_path",
    "missing_image",
    "unreadable_image",
)
SPLITS = ("train", "val", "test")
Variant = Literal["v1", "contrastive", "combined"]


class DataError(ValueError):
    """Input that cannot be used at all; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------
# Where the data is


@dataclass(frozen=True)
class DataSource:
    """Where ArtEmis is: CSV files (or a Hugging Face dataset) and the WikiArt images root."""

    csv: Path | None = None
    """The v1.0 annotations (``artemis_dataset_release_v0.csv``)."""
    images: Path | None = None
    """The WikiArt root: images are ``<images>/<art_style>/<painting>.jpg``."""
    lexicon: Path | None = None
    """An NRC-VAD lexicon file (optional)."""
    contrastive: Path | None = None
    """The v2.0 ``Contrastive.csv`` (for the ``contrastive`` and ``combined`` variants)."""
    variant: Variant = "v1"
    """v1: the v1.0 rows; contrastive: the v2.0 rows; combined: v2.0 + as many v1.0 rows."""
    hf: str | None = None
    """A Hugging Face dataset with the ArtEmis columns: a hub name or a saved local folder."""

    def __post_init__(self) -> None:
        if self.variant not in ("v1", "contrastive", "combined"):
            raise DataError(f"variant must be v1, contrastive or combined, got {self.variant!r}")
        if self.images is None:
            raise DataError("no images root: give --images DIR (or --data DIR with DIR/wikiart)")
        if self.hf is None and self.variant != "contrastive" and self.csv is None:
            raise DataError("no annotations: give --csv FILE or --data DIR")
        if self.hf is not None and self.variant != "v1":
            raise DataError("--variant applies to CSV files; a Hugging Face dataset is read whole")
        if self.variant != "v1" and self.contrastive is None:
            raise DataError(f"the {self.variant} variant needs --contrastive FILE")

    @classmethod
    def resolve(
        cls,
        data: str | None = None,
        csv: str | Path | None = None,
        images: str | Path | None = None,
        lexicon: str | Path | None = None,
        contrastive: str | Path | None = None,
        variant: Variant = "v1",
    ) -> DataSource:
        """A source from the command-line options; explicit paths win over ``--data``.

        ``data`` is a folder in the released layout (``artemis_dataset_release_v0.csv``,
        ``wikiart/``, optional ``NRC-VAD-Lexicon.txt`` and ``Contrastive.csv``), a folder
        saved by ``datasets``, or ``hf:ORG/NAME`` for a dataset on the Hugging Face hub.
        """
        hf = None
        if data is not None and data.startswith("hf:"):
            hf = data[3:]
        elif data is not None:
            root = Path(data)
            if not root.is_dir():
                raise DataError(f"--data {data}: not a folder")
            if is_saved_hf_dataset(root):
                hf = str(root.absolute())
            else:
                csv = csv or root / V1_CSV_NAME
                if lexicon is None and (root / LEXICON_NAME).is_file():
                    lexicon = root / LEXICON_NAME
                if contrastive is None and (root / CONTRASTIVE_CSV_NAME).is_file():
                    contrastive = root / CONTRASTIVE_CSV_NAME
            if images is None and (root / IMAGES_DIR_NAME).is_dir():
                images = root / IMAGES_DIR_NAME
        source = cls(
            csv=_path(csv),
            images=_path(images),
            lexicon=_path(lexicon),
            contrastive=_path(contrastive),
            variant=variant,
            hf=hf,
        )
        source.check_files()
        return source

    def check_files(self) -> None:
        """Fail now, with the option's name, on an images root or a lexicon that cannot be
        used. Found later, a wrong images root is only every row skipped as
        ``missing_image``, and a bad lexicon an error inside the Ray workers of training or
        a search."""
        if not self.images.is_dir():
            problem = "not a folder" if self.images.exists() else "no such folder"
            raise DataError(
                f"--images {self.images}: {problem} (the WikiArt root, holding "
                f"<art_style>/<painting>{IMAGE_EXTENSION})"
            )
        if self.lexicon is not None:
            try:
                read_lexicon(self.lexicon)
            except LexiconError as e:
                raise DataError(f"--lexicon: {e}") from e

    def describe(self) -> dict[str, str | None]:
        return {k: None if v is None else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, str | None]) -> DataSource:
        """The inverse of :meth:`describe` (how workers receive the source)."""
        paths = ("csv", "images", "lexicon", "contrastive")
        return cls(**{k: _path(v) if k in paths else v for k, v in values.items()})


def _path(p: str | Path | None) -> Path | None:
    """Absolute: Ray workers may run in another working directory (a job's working_dir)."""
    return None if p is None else Path(p).expanduser().absolute()


def is_saved_hf_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``datasets``' ``save_to_disk``."""
    return any((folder / n).is_file() for n in ("dataset_dict.json", "state.json"))


# ---------------------------------------------------------------------------------------------
# Reading rows


FIELD_SIZE_LIMIT = 1 << 24
"""Largest CSV field read (16 MiB); Python's default of 128 KiB would make one long row fatal."""
LONG_RECORD_LINES = 4
"""A record spanning more physical lines than this is reported: likely an unbalanced quote."""


def read_csv_rows(path: Path, required: Iterable[str] = REQUIRED_COLUMNS) -> Iterator[dict]:
    """The rows of an ArtEmis CSV as dicts (real CSV quoting); a malformed file is a DataError.

    Each row carries ``_line`` (its first physical line) and ``_lines`` (how many it spans).
    Bytes that are not UTF-8 become U+FFFD, so one bad byte costs at most its row.
    """
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="replace")  # noqa: SIM115
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
    with f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
        except csv.Error as e:
            raise DataError(f"{path}: not a CSV file: {e}") from e
        if not header:
            raise DataError(f"{path}: empty file, expected a CSV header")
        names = [name.strip() for name in header]
        missing = [c for c in required if c not in names]
        if missing:
            found = ", ".join(names[:8])
            raise DataError(
                f"{path}: not an ArtEmis CSV: missing required column(s) "
                f"{', '.join(missing)} (header has: {found})"
            )
        twice = sorted({c for c in required if names.count(c) > 1})
        if twice:
            raise DataError(f"{path}: column(s) {', '.join(twice)} appear more than once")
        reader.fieldnames = names
        previous = reader.line_num
        try:
            for row in reader:
                row["_line"], row["_lines"] = previous + 1, reader.line_num - previous
                previous = reader.line_num
                yield row
        except csv.Error as e:
            raise DataError(f"{path}: malformed CSV near line {reader.line_num}: {e}") from e


def read_hf_rows(spec: str) -> Iterator[dict]:
    """The rows of a Hugging Face dataset (every split, in name order) with the ArtEmis columns."""
    import datasets

    try:
        ds = datasets.load_from_disk(spec) if Path(spec).is_dir() else datasets.load_dataset(spec)
    except Exception as e:  # datasets raises many types: missing, offline, bad format
        raise DataError(f"hf:{spec}: cannot load the dataset: {e}") from e
    parts = [ds[k] for k in sorted(ds)] if isinstance(ds, datasets.DatasetDict) else [ds]
    line = 0
    for part in parts:
        missing = [c for c in REQUIRED_COLUMNS if c not in part.column_names]
        if missing:
            raise DataError(f"hf:{spec}: missing required column(s) {', '.join(missing)}")
        labels = {
            c: part.features[c].int2str
            for c in REQUIRED_COLUMNS
            if isinstance(part.features[c], datasets.ClassLabel)
        }
        for batch in part.select_columns(list(REQUIRED_COLUMNS)).iter(batch_size=4096):
            for values in zip(*(batch[c] for c in REQUIRED_COLUMNS), strict=True):
                line += 1
                row = dict(zip(REQUIRED_COLUMNS, values, strict=True))
                for column, to_name in labels.items():
                    row[column] = None if row[column] is None else to_name(row[column])
                yield {**row, "_line": line, "_lines": 1}


def iter_source_rows(source: DataSource, seed: int = 0) -> Iterator[dict]:
    """The rows of a source, for its variant (``combined``: v2.0 + an equal seeded v1.0 sample)."""
    if source.hf is not None:
        yield from read_hf_rows(source.hf)
        return
    if source.variant == "v1":
        yield from read_csv_rows(source.csv)
        return
    contrastive = list(read_csv_rows(source.contrastive, CONTRASTIVE_COLUMNS))
    yield from contrastive
    if source.variant == "combined":
        v1 = list(read_csv_rows(source.csv))
        picked = random.Random(seed).sample(range(len(v1)), k=min(len(contrastive), len(v1)))
        yield from (v1[i] for i in sorted(picked))


# ---------------------------------------------------------------------------------------------
# Images on disk


def _unsafe_component(part: str) -> bool:
    return (
        not part
        or part in (".", "..")
        or any(sep in part for sep in ("/", "\\", "\0"))
        or os.path.isabs(part)
    )


class ImageIndex:
    """Finds ``<root>/<art_style>/<painting>.jpg``, in either Unicode normal form.

    Folder listings are read once and keyed by NFC name, so a painting whose name exists on
    disk only in the other normal form (NFC vs NFD) still resolves. A path whose components
    or symlinks would lead outside the root is ``invalid_path``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._real_root = self.root.resolve()
        self._listings: dict[Path, dict[str, str]] = {}

    def _listing(self, folder: Path) -> dict[str, str]:
        if folder not in self._listings:
            try:
                names = os.listdir(folder)
            except OSError:
                names = []
            self._listings[folder] = {unicodedata.normalize("NFC", n): n for n in names}
        return self._listings[folder]

    def _find(self, folder: Path, name: str) -> Path | None:
        actual = self._listing(folder).get(unicodedata.normalize("NFC", name))
        return None if actual is None else folder / actual

    def locate(self, art_style: str, painting: str) -> tuple[Path | None, str | None]:
        """``(path, None)`` for a found image, else ``(None, reason)``."""
        if _unsafe_component(art_style) or _unsafe_component(painting + IMAGE_EXTENSION):
            return None, "invalid_path"
        style_dir = self._find(self.root, art_style)
        image = None if style_dir is None else self._find(style_dir, painting + IMAGE_EXTENSION)
        if image is None:
            return None, "missing_image"
        if not image.resolve().is_relative_to(self._real_root):
            return None, "invalid_path"
        return image, None


# ---------------------------------------------------------------------------------------------
# The loaded data set


@dataclass
class Annotation:
    """One person's emotion and explanation for a painting."""

    emotion: str
    utterance: str
    line: int | None = None
    """Where the row starts in its file (a row index for a Hugging Face dataset)."""
    text: str | None = None
    """The explanation prepared for training; None when the preparation drops it."""


@dataclass
class Painting:
    """A painting, its image file and all its kept annotations."""

    art_style: str
    painting: str
    image: Path
    split: str = "train"
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The painting's identity: ``style/painting`` in NFC."""
        return painting_key(self.art_style, self.painting)


def painting_key(art_style: str, painting: str) -> str:
    return unicodedata.normalize("NFC", f"{art_style}/{painting}")


@dataclass
class DataReport:
    """What was read, what was kept, and why the rest was skipped."""

    source: dict
    rows_total: int
    rows_kept: int
    paintings_kept: int
    skipped: dict[str, int]
    splits: dict[str, int]
    emotion_counts: dict[str, int]
    images_decoded: bool
    text: dict = field(default_factory=dict)
    """The utterance preparation: kept, too_short, too_long, max_tokens (apart from validity)."""
    skipped_examples: dict[str, list[dict]] = field(default_factory=dict)
    """Up to five skipped rows per reason (line, art_style, painting), to find them."""
    lexicon: dict = field(default_factory=dict)
    """The lexicon's file, hash and size, and its coverage of the kept explanations."""
    warnings: list[str] = field(default_factory=list)
    """Things read but worth a look: bytes that were not UTF-8, records over many lines."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A short human summary."""
        n_skipped = sum(self.skipped.values())
        lines = [
            f"rows: {self.rows_total} read, {self.rows_kept} kept, {n_skipped} skipped",
            f"paintings: {self.paintings_kept} kept; splits "
            + ", ".join(f"{k} {v}" for k, v in self.splits.items()),
        ]
        if n_skipped:
            reasons = ", ".join(f"{k} {v}" for k, v in self.skipped.items() if v)
            lines.append(f"skipped: {reasons}")
        lines += [f"warning: {w}" for w in self.warnings]
        if not self.images_decoded:
            lines.append("images: found on disk, not decoded (unreadable ones drop at load time)")
        if self.text.get("enabled"):
            t = self.text
            lines.append(
                f"text preparation: {t['kept']} explanations kept, {t['too_short']} under "
                f"{t['min_tokens']} tokens, {t['too_long']} over {t['max_tokens']} tokens"
            )
        lines.append("emotions: " + ", ".join(f"{k} {v}" for k, v in self.emotion_counts.items()))
        if self.lexicon:
            c = self.lexicon["coverage"]
            lines.append(
                f"lexicon: {self.lexicon['entries']} entries, knows {c['known']} of "
                f"{c['words']} explanation words ({c['share']:.0%})"
            )
        return "\n".join(lines)


@dataclass
class ArtemisData:
    """Kept paintings with their splits, and the report of how they were read."""

    paintings: list[Painting]
    report: DataReport

    def split(self, name: str) -> list[Painting]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [p for p in self.paintings if p.split == name]


def split_paintings(
    keys: Iterable[str], seed: int = 0, fractions: tuple[float, float, float] = (0.85, 0.05, 0.10)
) -> dict[str, str]:
    """Painting key -> split, each painting by its own seeded hash.

    A painting's split depends only on the seed and its key: not on row order, and not on
    which other paintings are present, so fixing or dropping one row never moves another
    painting between train and test. Proportions are met in expectation; a split asked for
    that comes out empty (three to a few dozen paintings) takes the nearest painting of the
    largest split.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1: {fractions}"
        )
    position = {key: _unit_hash(seed, key) for key in set(keys)}
    bounds = (fractions[0], fractions[0] + fractions[1])
    splits = {key: SPLITS[bisect.bisect_right(bounds, u)] for key, u in position.items()}
    if len(splits) >= 3:
        for i, name in enumerate(SPLITS):
            counts = Counter(splits.values())
            if fractions[i] > 0 and counts[name] == 0:
                centre = sum(fractions[:i]) + fractions[i] / 2
                donor = counts.most_common(1)[0][0]
                pool = [k for k, s in splits.items() if s == donor]
                splits[min(pool, key=lambda k: (abs(position[k] - centre), k))] = name
    return splits


def _unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key)."""
    digest = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def load_artemis(
    source: DataSource,
    *,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.85, 0.05, 0.10),
    decode_images: bool = False,
    prep: UtterancePrep | None = None,
    progress: Callable[[str], None] | None = None,
) -> ArtemisData:
    """Read a source, check every row, group kept rows by painting, split, prepare the text.

    ``decode_images`` decodes every referenced image once (``sevlm data check``); without
    it, images are only found on disk and undecodable ones are dropped later, when loaded.
    """
    prep = prep or UtterancePrep()
    index = ImageIndex(source.images)
    skipped: Counter[str] = Counter()
    examples: dict[str, list[dict]] = {}
    paintings: dict[str, Painting] = {}
    rows_total = 0

    notes = _RowNotes()

    def skip(
        reason: str, line: int | None, style: str, name: str, emotion: object, rows: int = 1
    ) -> None:
        skipped[reason] += rows
        if len(examples.setdefault(reason, [])) < 5:
            examples[reason].append(
                {"line": line, "art_style": style, "painting": name, "emotion": emotion}
            )

    for row in iter_source_rows(source, seed):
        rows_total += 1
        notes.see(row)
        line = row.get("_line")
        style, name = _text(row.get("art_style")), _text(row.get("painting"))
        emotion = normalize_emotion(row.get("emotion"))
        utterance = _text(row.get("utterance"))
        if swallowed := _swallowed_rows(row):
            rows_total += swallowed
            skip("unbalanced_quote", line, style, name, row.get("emotion"), 1 + swallowed)
            continue
        if None in row:  # csv.DictReader's key for fields beyond the header's
            skip("extra_fields", line, style, name, row.get("emotion"))
            continue
        if emotion is None:
            skip("unknown_emotion", line, style, name, row.get("emotion"))
            continue
        if not utterance.strip():
            skip("empty_utterance", line, style, name, emotion)
            continue
        key = painting_key(style, name)
        if key not in paintings:
            image, reason = index.locate(style, name)
            if reason is not None:
                skip(reason, line, style, name, emotion)
                continue
            paintings[key] = Painting(style, name, image)
        annotation = Annotation(emotion, " ".join(utterance.split()), line)
        paintings[key].annotations.append(annotation)

    warnings = notes.warnings()
    if not paintings and skipped["missing_image"]:
        warnings.append(_no_image_found(index.root, examples["missing_image"][0]))
    if decode_images:
        for key in _unreadable(list(paintings.values()), progress):
            painting = paintings.pop(key)
            for a in painting.annotations:
                skip("unreadable_image", a.line, painting.art_style, painting.painting, a.emotion)

    kept = sorted(paintings.values(), key=lambda p: p.key)
    for key, split in split_paintings(paintings, seed, split_fractions).items():
        paintings[key].split = split
    text_report = prepare_text(kept, prep)
    emotion_counts = Counter(a.emotion for p in kept for a in p.annotations)
    report = DataReport(
        source=source.describe(),
        rows_total=rows_total,
        rows_kept=sum(len(p.annotations) for p in kept),
        paintings_kept=len(kept),
        skipped={r: skipped[r] for r in SKIP_REASONS},
        splits={s: sum(p.split == s for p in kept) for s in SPLITS},
        emotion_counts={e: emotion_counts[e] for e in EMOTIONS},
        images_decoded=decode_images,
        text=text_report,
        skipped_examples=examples,
        warnings=warnings,
    )
    return ArtemisData(kept, report)


def _no_image_found(root: Path, example: dict) -> str:
    """The hint for an images root that is the wrong folder: not one image found under it."""
    expected = root / example["art_style"] / (example["painting"] + IMAGE_EXTENSION)
    return (
        f"no image was found under the images root {root}: expected files like {expected} "
        "(the root is the folder that holds the <art_style> folders)"
    )


def _swallowed_rows(row: dict) -> int:
    """Lines inside the record's fields that read as rows of their own (four or more fields,
    one of them an emotion): a quote left open has swallowed them. 0 for a one-line record,
    or for line breaks inside an explanation."""
    if row.get("_lines", 1) <= 1:
        return 0
    values = [v for k, v in row.items() if k is not None] + list(row.get(None) or [])
    lines = [line for v in values if isinstance(v, str) for line in v.splitlines()[1:]]
    return sum(
        len(parts := line.split(",")) >= len(REQUIRED_COLUMNS)
        and any(normalize_emotion(part) for part in parts)
        for line in lines
    )


def _text(value: object) -> str:
    """A cell as text: None is empty, numbers (from typed datasets) become their digits."""
    return "" if value is None else value if isinstance(value, str) else str(value)


class _RowNotes:
    """Counts rows that were read but deserve a look."""

    def __init__(self) -> None:
        self.replaced: list[int] = []
        self.long: list[tuple[int, int]] = []

    def see(self, row: dict) -> None:
        line = row.get("_line") or 0
        if any(isinstance(v, str) and "\ufffd" in v for v in row.values()):
            self.replaced.append(line)
        if row.get("_lines", 1) > LONG_RECORD_LINES:
            self.long.append((line, row["_lines"]))

    def warnings(self) -> list[str]:
        out = []
        if self.replaced:
            out.append(
                f"{len(self.replaced)} row(s) had bytes that are not UTF-8, read as U+FFFD "
                f"(first at line {self.replaced[0]})"
            )
        if self.long:
            line, span = self.long[0]
            out.append(
                f"{len(self.long)} record(s) span more than {LONG_RECORD_LINES} lines, the first "
                f"at line {line} over {span} lines: an unbalanced quote?"
            )
        return out


def _unreadable(paintings: list[Painting], progress: Callable[[str], None] | None) -> list[str]:
    """Keys of paintings whose image does not decode; decodes in threads (PIL frees the GIL).

    Work goes to the pool a window at a time, so memory does not grow with the image count.
    """
    bad: list[str] = []
    started = last = time.monotonic()
    window = 1024
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        for begin in range(0, len(paintings), window):
            chunk = paintings[begin : begin + window]
            for painting, ok in zip(
                chunk, pool.map(check_image, (p.image for p in chunk)), strict=True
            ):
                if not ok:
                    bad.append(painting.key)
            done, now = begin + len(chunk), time.monotonic()
            if progress is not None and (now - last > 5 or done == len(paintings)):
                last = now
                rate = done / max(now - started, 1e-9)
                progress(
                    f"decoded {done}/{len(paintings)} images ({rate:.0f}/s), {len(bad)} unreadable"
                )
    return bad


def prepare_text(paintings: list[Painting], prep: UtterancePrep) -> dict:
    """Set each annotation's training text; the length limit comes from the training split.

    Only the joined text is held per annotation (not token lists): memory stays near the
    size of the text itself.
    """
    annotations = [a for p in paintings for a in p.annotations]
    for a in annotations:
        a.text = " ".join(prep.clean(a.utterance))
    train = (a for p in paintings if p.split == "train" for a in p.annotations)
    max_tokens = prep.max_tokens([_n_tokens(a.text) for a in train])
    verdicts: Counter[str] = Counter()
    for a in annotations:
        verdict = prep.verdict(_n_tokens(a.text), max_tokens)
        verdicts[verdict or "kept"] += 1
        if verdict is not None or not a.text:
            a.text = None
    return {
        "enabled": prep.enabled,
        "min_tokens": prep.min_tokens,
        "max_percentile": prep.max_percentile,
        "max_tokens": max_tokens,
        "kept": verdicts["kept"],
        "too_short": verdicts["too_short"],
        "too_long": verdicts["too_long"],
    }


def _n_tokens(text: str | None) -> int:
    return len(text.split()) if text else 0
