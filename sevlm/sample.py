"""The embedded sample: a small synthetic dataset in the exact layout of ArtEmis v1.0.

The real ArtEmis annotations and WikiArt images cannot be downloaded here, so every
command runs, with no arguments, on this sample instead. It is written in the very
layout the real release has, so the same reading code serves both:

- ``artemis_dataset_release_v0.csv`` with the columns
  ``art_style, painting, emotion, utterance, repetition``;
- ``wikiart/<art_style>/<painting>.jpg``, a few painting names with accented letters
  stored in NFD on disk while the CSV spells them in NFC, as real downloads do;
- ``NRC-VAD-Lexicon.txt``, a small hand-written lexicon in the NRC-VAD v1 layout,
  with illustrative values for the sample's own vocabulary only.

The sample is made to be learnable by a tiny model in minutes on a CPU. Every painting
has a dominant emotion that holds more than half of its annotations, and its picture
shows that emotion through a palette, shapes and a texture of its own (yellow bubbles
for amusement, dark jagged strokes for anger, ...). Most paintings also carry a
minority emotion, usually a plausible neighbour, so the contrastive head has pairs.
Each explanation names what the picture shows and uses words of its annotation's
emotion. Same arguments, same seed: byte-identical files.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sevlm.artemis import IMAGES_DIR_NAME, LEXICON_NAME, V1_CSV_NAME
from sevlm.emotions import EMOTIONS

DEFAULT_PAINTINGS = 240
MIN_PAINTINGS = 10
MIN_IMAGE_SIZE = 16
CSV_COLUMNS = ("art_style", "painting", "emotion", "utterance", "repetition")

MARKER_NAME = ".sevlm-sample"
"""Written into every sample folder: a folder holding it may be written over again."""
MARKER_TEXT = "written by `sevlm data sample`: a generated dataset, rewritten at will\n"

RGB = tuple[int, int, int]
Rng = np.random.Generator


class NotASampleError(ValueError):
    """The folder holds files, not of a sample, that writing the sample would overwrite."""


@dataclass(frozen=True)
class SampleSummary:
    """Where a sample was written and how big it is."""

    out: Path
    paintings: int
    rows: int
    csv: Path
    images: Path
    lexicon: Path


def sample_lexicon_path() -> Path:
    """The packaged sample lexicon (NRC-VAD v1 layout, illustrative values)."""
    return Path(__file__).parent / "assets" / "sample_lexicon.txt"


def write_sample(
    out: Path | str,
    paintings: int = DEFAULT_PAINTINGS,
    seed: int = 0,
    image_size: int = 96,
    force: bool = False,
) -> SampleSummary:
    """Write the sample under ``out`` (created if missing) and say what was written.

    Files of an earlier sample in ``out`` (a folder with :data:`MARKER_NAME`) are overwritten;
    nothing is deleted. Other files the sample would overwrite, such as a real ArtEmis
    download, raise :class:`NotASampleError` unless ``force``.
    """
    if paintings < MIN_PAINTINGS:
        raise ValueError(f"a sample needs at least {MIN_PAINTINGS} paintings, got {paintings}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    out = Path(out)
    images = out / IMAGES_DIR_NAME
    csv_path, lexicon = out / V1_CSV_NAME, out / LEXICON_NAME
    rng = np.random.default_rng(seed)
    planned = _paintings(rng, paintings)
    pictures = [images / style / f"{unicodedata.normalize('NFD', name)}.jpg"
                for style, name, _ in planned]  # fmt: skip
    if not force:
        _check_overwrites(out, [csv_path, lexicon, *pictures])
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_NAME).write_text(MARKER_TEXT)
    rows: list[tuple[str, str, str, str, int]] = []
    for index, ((style, name, dominant), picture) in enumerate(zip(planned, pictures, strict=True)):
        felt = _annotation_emotions(rng, dominant)
        for emotion in felt:
            rows.append((style, name, emotion, _utterance(rng, dominant, emotion), len(felt)))
        picture.parent.mkdir(parents=True, exist_ok=True)
        _draw(np.random.default_rng([seed, index]), dominant, image_size).save(picture, quality=90)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    shutil.copyfile(sample_lexicon_path(), lexicon)
    return SampleSummary(out, paintings, len(rows), csv_path, images, lexicon)


def _check_overwrites(out: Path, files: list[Path]) -> None:
    """Refuse to write over files of something else than a sample: a real dataset's CSV,
    lexicon and images have the very names the sample writes."""
    if (out / MARKER_NAME).is_file():
        return
    taken = [f for f in files if f.exists()]
    if taken:
        shown = ", ".join(str(f.relative_to(out)) for f in taken[:3])
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        raise NotASampleError(
            f"{out}: not a sample folder (no {MARKER_NAME}) and holds files the sample would "
            f"overwrite: {shown}{more}"
        )


def cache_root() -> Path:
    """sevlm's cache folder: ``$SEVLM_CACHE``, else ``$XDG_CACHE_HOME/sevlm``, else
    ``~/.cache/sevlm``."""
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("SEVLM_CACHE") or Path(xdg) / "sevlm").absolute()


def cached_sample(cache: Path | str | None = None) -> Path:
    """The default sample, written on first use into ``cache`` (default: :func:`cache_root`),
    atomically: a folder that is there is complete, even when two processes race to write
    it."""
    target = Path(cache or cache_root()).absolute() / f"sample-{DEFAULT_PAINTINGS}-v1"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=target.parent))
    try:
        write_sample(staging)
        staging.chmod(0o755)
        staging.rename(target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pick(rng: Rng, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


# --- paintings: style, ArtEmis-like name, dominant emotion -------------------------------

_STYLES = (
    "Impressionism",
    "Expressionism",
    "Romanticism",
    "Cubism",
    "Baroque",
    "Abstract_Expressionism",
    "Realism",
    "Symbolism",
)
_FIRST = ("anna", "pierre", "jan", "maria", "karl", "lucia", "tomas", "clara", "ivan", "sofia")
_LAST = ("voss", "lindqvist", "moreau", "brandt", "rossi", "hale", "novak", "ferreira", "dahl")
# Each holds letters that NFD decomposes, so the NFC and NFD spellings differ.
_ACCENTED_ARTISTS = (
    "élodie-marchand",
    "andré-lefèvre",
    "józef-wróbel",
    "jürgen-köhler",
    "inés-garcía",
    "françois-duval",
    "zoë-van-dam",
)
_TITLE_WORDS = (
    "morning", "river", "garden", "portrait", "woman", "still", "life", "flowers", "harbour",
    "evening", "village", "study", "composition", "landscape", "old", "mill", "bridge",
    "winter", "road", "sea", "boats", "dancers", "storm", "church", "orchard", "figure",
)  # fmt: skip
_ACCENT_SHARE = 0.03


def _paintings(rng: Rng, count: int) -> list[tuple[str, str, str]]:
    """(art_style, painting, dominant emotion) for each painting, names unique per style."""
    dominants = [EMOTIONS[i % len(EMOTIONS)] for i in range(count)]
    order = rng.permutation(count)
    accented = set(rng.choice(count, size=max(1, round(_ACCENT_SHARE * count)), replace=False))
    taken: set[tuple[str, str]] = set()
    result = []
    for index in range(count):
        style = _pick(rng, _STYLES)
        name = _painting_name(rng, accented=index in accented)
        while (style, name) in taken:
            name = _painting_name(rng, accented=index in accented)
        taken.add((style, name))
        result.append((style, name, dominants[order[index]]))
    return result


def _painting_name(rng: Rng, accented: bool) -> str:
    if accented:
        artist = _pick(rng, _ACCENTED_ARTISTS)
    else:
        artist = f"{_pick(rng, _FIRST)}-{_pick(rng, _LAST)}"
    words = [_pick(rng, _TITLE_WORDS) for _ in range(int(rng.integers(1, 4)))]
    year = int(rng.integers(1820, 1961))
    return unicodedata.normalize("NFC", f"{artist}_{'-'.join(words)}-{year}")


# --- annotations: a dominant emotion and plausible minority ones -------------------------

_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "amusement": ("excitement", "contentment"),
    "awe": ("contentment", "fear", "excitement"),
    "contentment": ("awe", "amusement"),
    "excitement": ("amusement", "awe", "anger"),
    "anger": ("disgust", "fear", "excitement"),
    "disgust": ("anger", "fear", "something else"),
    "fear": ("sadness", "awe", "anger"),
    "sadness": ("fear", "contentment", "something else"),
    "something else": ("awe", "amusement", "sadness"),
}
_ANNOTATION_COUNTS = (4, 5, 5, 5, 6)
_UNANIMOUS_SHARE = 0.1
_STRONG_SHARE = 0.25
_NEIGHBOUR_SHARE = 0.7


def _annotation_emotions(rng: Rng, dominant: str) -> list[str]:
    """The emotions of one painting's annotations; the dominant holds more than half."""
    count = int(rng.choice(_ANNOTATION_COUNTS))
    if rng.random() < _UNANIMOUS_SHARE:
        return [dominant] * count
    majority = count // 2 + 1
    if majority + 1 < count and rng.random() < _STRONG_SHARE:
        majority += 1
    labels = [dominant] * majority + [_minority(rng, dominant) for _ in range(count - majority)]
    return [labels[i] for i in rng.permutation(count)]


def _minority(rng: Rng, dominant: str) -> str:
    if rng.random() < _NEIGHBOUR_SHARE:
        return _pick(rng, _NEIGHBOURS[dominant])
    return _pick(rng, [e for e in EMOTIONS if e != dominant])


# --- explanations: what the picture shows, in words of the annotation's emotion ----------


@dataclass(frozen=True)
class _Voice:
    """Words for one emotion: how a picture looks, how one feels, what it recalls."""

    looks: tuple[str, ...]
    feels: tuple[str, ...]
    nouns: tuple[str, ...]
    scenes: tuple[str, ...]


@dataclass(frozen=True)
class _Sight:
    """What a picture of one emotion shows: plural things and a background."""

    things: tuple[str, ...]
    grounds: tuple[str, ...]


_VOICES: dict[str, _Voice] = {
    "amusement": _Voice(
        ("playful", "cheerful", "funny", "silly", "whimsical"),
        ("amused", "happy", "cheerful", "giddy"),
        ("amusement", "joy", "fun", "laughter"),
        ("a children's party", "a circus full of clowns", "a bubble bath"),
    ),
    "awe": _Voice(
        ("majestic", "sublime", "magnificent", "breathtaking", "grand"),
        ("amazed", "astonished", "humbled", "awed"),
        ("awe", "wonder", "reverence"),
        ("standing before a great mountain", "a clear night in the wilderness"),
    ),
    "contentment": _Voice(
        ("calm", "peaceful", "serene", "gentle", "tranquil"),
        ("relaxed", "content", "calm", "peaceful", "safe"),
        ("contentment", "peace", "calm", "comfort"),
        ("a quiet afternoon in the countryside", "a warm summer day"),
    ),
    "excitement": _Voice(
        ("thrilling", "energetic", "dynamic", "electric", "wild"),
        ("excited", "thrilled", "energized", "alive"),
        ("excitement", "energy", "thrill"),
        ("fireworks at a festival", "a race at full speed"),
    ),
    "anger": _Voice(
        ("furious", "violent", "aggressive", "hostile", "brutal"),
        ("angry", "furious", "irritated", "enraged"),
        ("anger", "rage", "fury"),
        ("a violent fight", "someone screaming in rage"),
    ),
    "disgust": _Voice(
        ("repulsive", "filthy", "gross", "nauseating", "rotten"),
        ("disgusted", "sick", "nauseous", "repulsed"),
        ("disgust", "revulsion"),
        ("rotten food", "a dirty swamp"),
    ),
    "fear": _Voice(
        ("terrifying", "creepy", "eerie", "menacing", "ominous"),
        ("scared", "afraid", "frightened", "terrified", "uneasy"),
        ("fear", "dread", "terror", "horror"),
        ("a bad nightmare", "a haunted house at night"),
    ),
    "sadness": _Voice(
        ("gloomy", "bleak", "dreary", "melancholy", "lonely"),
        ("sad", "depressed", "lonely", "heartbroken", "sorrowful"),
        ("sadness", "sorrow", "grief", "melancholy"),
        ("a rainy funeral", "a long lonely day"),
    ),
    "something else": _Voice(
        ("strange", "odd", "puzzling", "bizarre", "weird"),
        ("confused", "puzzled", "curious", "indifferent", "bored"),
        ("confusion", "curiosity", "indifference"),
        ("a puzzle with missing pieces", "a random pattern on a wall"),
    ),
}

_SIGHTS: dict[str, _Sight] = {
    "amusement": _Sight(
        ("the yellow bubbles", "the little round bubbles", "the pink and white circles"),
        ("the bright orange background", "the sunny yellow sky"),
    ),
    "awe": _Sight(
        ("the tiny stars", "the tall dark peaks", "the small bright stars"),
        ("the deep blue sky", "the violet night sky"),
    ),
    "contentment": _Sight(
        ("the soft green bands", "the gentle green fields", "the calm horizontal stripes"),
        ("the quiet meadow", "the pale green hills"),
    ),
    "excitement": _Sight(
        ("the red bursts", "the yellow zigzags", "the orange rays"),
        ("the fiery red background", "the blazing orange"),
    ),
    "anger": _Sight(
        ("the dark jagged strokes", "the black slashes", "the sharp red lines"),
        ("the dark red background", "the blood red colour"),
    ),
    "disgust": _Sight(
        ("the brown blotches", "the olive stains", "the muddy smears"),
        ("the murky brown background", "the dirty olive colour"),
    ),
    "fear": _Sight(
        ("the pale thin shapes", "the ghostly lines", "the faint white outlines"),
        ("the black darkness", "the dark empty background"),
    ),
    "sadness": _Sight(
        ("the grey rain streaks", "the falling raindrops", "the thin vertical streaks"),
        ("the grey blue sky", "the washed out colours"),
    ),
    "something else": _Sight(
        ("the grey rectangles", "the random boxes", "the flat coloured blocks"),
        ("the plain grey background", "the neutral grey"),
    ),
}

# {thing} is plural, so verbs agree in plural; {a_look} is a look adjective with its article.
_TEMPLATES = (
    "i feel {feel} looking at {thing} and {ground}",
    "{thing} look so {look}, it's like {scene}",
    "the way {thing} fill the canvas makes me feel {feel}",
    "{thing} against {ground} seem {look} and {look2} to me",
    "i don't know why, but {thing} make me feel {feel}",
    "{thing} remind me of {scene}, i feel {feel}",
    "there is something {look} about {thing} and {ground}",
    "{thing} give the whole painting {a_look} mood",
    "{thing} fill me with {noun}, it's {look}",
    "the artist used {thing} to create a feeling of {noun}",
    "i can't stop looking at {thing}, they're {look} and {look2}",
)
_QUOTE_TEMPLATE = 'i would call this painting "{noun}" because of {thing}'
_QUOTE_SHARE = 0.03


def _utterance(rng: Rng, painted: str, felt: str) -> str:
    """One explanation: the painted emotion's picture, told in the felt emotion's words."""
    voice, sight = _VOICES[felt], _SIGHTS[painted]
    template = _QUOTE_TEMPLATE if rng.random() < _QUOTE_SHARE else _pick(rng, _TEMPLATES)
    look, look2 = (voice.looks[i] for i in rng.choice(len(voice.looks), 2, replace=False))
    return template.format(
        thing=_pick(rng, sight.things),
        ground=_pick(rng, sight.grounds),
        look=look,
        look2=look2,
        a_look=f"{'an' if look[0] in 'aeiou' else 'a'} {look}",
        feel=_pick(rng, voice.feels),
        noun=_pick(rng, voice.nouns),
        scene=_pick(rng, voice.scenes),
    )


# --- pictures: one palette, shape and texture per emotion --------------------------------


def _draw(rng: Rng, emotion: str, size: int) -> Image.Image:
    """The picture of a painting whose dominant emotion is ``emotion``."""
    return _PAINTERS[emotion](rng, size)


def _jitter(rng: Rng, colour: RGB, amount: int = 18) -> RGB:
    shifted = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def _gradient(rng: Rng, size: int, top: RGB, bottom: RGB, vertical: bool = True) -> Image.Image:
    """A linear blend from ``top`` to ``bottom``, both jittered, with a little grain."""
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    if not vertical:
        ramp = ramp.transpose(1, 0, 2)
    start, end = np.asarray(_jitter(rng, top)), np.asarray(_jitter(rng, bottom))
    pixels = start + ramp * (end - start) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _point(rng: Rng, size: int, low: float = 0.0, high: float = 1.0) -> tuple[int, int]:
    x, y = rng.uniform(low * size, high * size, 2)
    return int(x), int(y)


def _amusement(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (250, 222, 60), (250, 160, 40))
    draw = ImageDraw.Draw(image)
    colours: tuple[RGB, ...] = ((255, 255, 255), (255, 150, 200), (160, 230, 255), (255, 120, 40))
    for _ in range(int(rng.integers(12, 24))):
        x, y = _point(rng, size)
        r = int(rng.uniform(0.03, 0.09) * size) + 1
        fill = _jitter(rng, colours[int(rng.integers(len(colours)))], 12)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=(255, 255, 255))
    return image


def _awe(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (45, 20, 95), (30, 65, 165))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(12, 26))):
        x, y = _point(rng, size, 0.0, 0.5)
        draw.point((x, y), fill=_jitter(rng, (240, 240, 210), 15))
        draw.point((x + 1, y), fill=_jitter(rng, (240, 240, 210), 15))
    apex_x, apex_y = int(rng.uniform(0.3, 0.7) * size), int(rng.uniform(0.08, 0.25) * size)
    half = int(rng.uniform(0.25, 0.45) * size)
    draw.polygon(
        [(apex_x, apex_y), (apex_x - half, size), (apex_x + half, size)],
        fill=_jitter(rng, (18, 22, 55), 8),
    )
    cap_y, cap_half = apex_y + (size - apex_y) / 6, half / 6
    snow = [(apex_x, apex_y), (apex_x - cap_half, cap_y), (apex_x + cap_half, cap_y)]
    draw.polygon(snow, fill=(225, 230, 245))
    return image


def _contentment(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (200, 230, 200), (150, 200, 140))
    draw = ImageDraw.Draw(image)
    y = int(rng.uniform(0.2, 0.4) * size)
    while y < size:
        height = int(rng.uniform(0.08, 0.2) * size) + 1
        green = _jitter(rng, (130, 190, 125), 22)
        draw.rectangle((0, y, size, y + height), fill=green)
        y += height
    r = int(rng.uniform(0.05, 0.1) * size) + 1
    x, sun_y = int(rng.uniform(0.15, 0.85) * size), int(rng.uniform(0.05, 0.15) * size)
    draw.ellipse((x - r, sun_y - r, x + r, sun_y + r), fill=_jitter(rng, (250, 245, 190), 8))
    return image


def _excitement(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (230, 40, 30), (250, 130, 20), vertical=False)
    draw = ImageDraw.Draw(image)
    width = max(1, size // 40)
    for _ in range(int(rng.integers(2, 4))):
        cx, cy = _point(rng, size, 0.2, 0.8)
        length = rng.uniform(0.2, 0.4) * size
        for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(8, 14))):
            end = (cx + length * np.cos(angle), cy + length * np.sin(angle))
            draw.line([(cx, cy), end], fill=_jitter(rng, (255, 235, 60), 15), width=width)
    y, step = rng.uniform(0.3, 0.7) * size, size / int(rng.integers(5, 9))
    zigzag = [(i * step, y + (-1) ** i * 0.08 * size) for i in range(int(size / step) + 2)]
    draw.line(zigzag, fill=(255, 250, 220), width=width + 1)
    return image


def _anger(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (120, 12, 10), (60, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 12))):
        x, y = _point(rng, size, -0.2, 0.6)
        points = [(x, y)]
        for _ in range(int(rng.integers(4, 8))):
            x, y = x + rng.uniform(0.05, 0.15) * size, y + rng.uniform(0.05, 0.15) * size
            points.append((x + rng.normal(0, 0.04 * size), y + rng.normal(0, 0.04 * size)))
        colour = (10, 5, 5) if rng.random() < 0.6 else (215, 25, 20)
        draw.line(points, fill=_jitter(rng, colour, 10), width=int(rng.integers(2, 5)))
    return image


def _disgust(rng: Rng, size: int) -> Image.Image:
    coarse = rng.uniform(0, 1, (6, 6))
    blend = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size)))
    blend = blend[:, :, None] / 255.0
    olive, brown = np.asarray(_jitter(rng, (120, 115, 45))), np.asarray(_jitter(rng, (85, 60, 30)))
    pixels = olive + blend * (brown - olive) + rng.normal(0, 10, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 10))):
        x, y = _point(rng, size)
        rx, ry = (rng.uniform(0.04, 0.12, 2) * size).astype(int) + 1
        colour = (150, 145, 50) if rng.random() < 0.5 else (60, 42, 22)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=_jitter(rng, colour, 12))
    return image


def _fear(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (14, 14, 20), (4, 4, 8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        pale = _jitter(rng, (205, 205, 215), 15)
        x, y = _point(rng, size, 0.15, 0.85)
        if rng.random() < 0.5:
            rx, ry = int(rng.uniform(0.03, 0.07) * size) + 1, int(rng.uniform(0.12, 0.25) * size)
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), outline=pale)
        else:
            draw.line([(x, y), _point(rng, size)], fill=pale, width=1)
    return image


def _sadness(rng: Rng, size: int) -> Image.Image:
    image = _gradient(rng, size, (95, 105, 125), (120, 132, 150))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(30, 60))):
        x, y = _point(rng, size, -0.1, 1.0)
        length = rng.uniform(0.06, 0.16) * size
        draw.line([(x, y), (x + 0.1 * length, y + length)], fill=_jitter(rng, (165, 175, 190), 10))
    return image


def _something_else(rng: Rng, size: int) -> Image.Image:
    grey = int(rng.integers(118, 140))
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = _point(rng, size, -0.1, 0.8)
        w, h = (rng.uniform(0.1, 0.35, 2) * size).astype(int)
        colour = tuple(int(c) for c in rng.integers(60, 200, 3))
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour, outline=(40, 40, 40))
    return image


_PAINTERS: dict[str, Callable[[Rng, int], Image.Image]] = {
    "amusement": _amusement,
    "awe": _awe,
    "contentment": _contentment,
    "excitement": _excitement,
    "anger": _anger,
    "disgust": _disgust,
    "fear": _fear,
    "sadness": _sadness,
    "something else": _something_else,
}
