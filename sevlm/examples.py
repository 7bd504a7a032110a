"""Batch transforms from painting records to model inputs, with no Ray.

A painting record is a row of :func:`painting_records`: ``key, art_style, painting, image,
emotions, texts``. The Ray Data pipeline maps these same functions over its blocks; tests and
single-process runs call them directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from sevlm.artemis import Painting
from sevlm.config import ModelConfig
from sevlm.feature_cache import FeatureCache, attach_features, take_rows
from sevlm.images import ImageTransform
from sevlm.lexicon import VADLexicon, read_lexicon
from sevlm.sequences import SequenceBuilder, encode_pairs
from sevlm.tokenizer import OFFLINE_GPT2, load_tokenizer


@dataclass(frozen=True)
class ExampleConfig:
    """How painting records become model inputs."""

    image_size: int = 224
    """Image height and width fed to the encoder."""
    max_len: int = 30
    """Sequence length in tokens, ``<bos>`` to ``<eos>``, padded."""
    tokenizer: str = OFFLINE_GPT2
    """Tokenizer name or folder (see :func:`sevlm.tokenizer.load_tokenizer`)."""
    lexicon: str | None = None
    """NRC-VAD file; None gives every token zero VAD."""
    seed: int = 0
    """Seed of the per-epoch annotation pairing."""

    def __post_init__(self) -> None:
        ImageTransform(self.image_size)  # validates the size
        if self.lexicon is not None:  # absolute: workers may run in another directory
            object.__setattr__(self, "lexicon", str(Path(self.lexicon).expanduser().absolute()))
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")

    @classmethod
    def for_model(
        cls, config: ModelConfig, lexicon: Path | str | None = None, seed: int = 0
    ) -> ExampleConfig:
        """The inputs a model was built for: its image size, length, tokenizer."""
        return cls(
            image_size=config.image_size,
            max_len=config.max_len,
            tokenizer=config.tokenizer,
            lexicon=None if lexicon is None else str(lexicon),
            seed=seed,
        )

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(self.image_size)


@lru_cache(maxsize=4)
def sequence_builder(tokenizer: str, lexicon: str | None, max_len: int) -> SequenceBuilder:
    """One builder per process and setting: tokenizer and lexicon are read once."""
    lex = read_lexicon(lexicon) if lexicon else VADLexicon({})
    return SequenceBuilder(load_tokenizer(tokenizer), lex, max_len)


def painting_records(paintings: list[Painting]) -> dict[str, list]:
    """Columns of painting records; only annotations that have training text are kept.

    ``annotations`` is JSON (``[[emotion, text], ...]``): a plain string column stays in
    Arrow through Ray Data, where ragged lists would fall back to pickled objects.
    """
    rows = [p for p in paintings if any(a.text for a in p.annotations)]
    return {
        "key": [p.key for p in rows],
        "art_style": [p.art_style for p in rows],
        "painting": [p.painting for p in rows],
        "image": [str(p.image) for p in rows],
        "annotations": [
            json.dumps([[a.emotion, a.text] for a in p.annotations if a.text]) for p in rows
        ],
    }


def decode_batch(
    batch: dict, config: ExampleConfig, threads: int = 1
) -> tuple[dict, dict[str, list[str]]]:
    """Add ``pixel_values`` ``[B, 3, S, S]``; rows whose image cannot be read are dropped.

    Returns the batch and the dropped rows' keys by reason (``missing_image``,
    ``unreadable_image``). With ``threads`` > 1 the images are decoded by that many threads:
    Pillow releases the GIL while it decodes and resizes, so they run in parallel.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    paths = [Path(path) for path in batch["image"]]
    load = partial(_load_or_reason, config.transform)
    if threads > 1 and len(paths) > 1:
        Image.init()  # every format plugin, before threads open files of any format
        with ThreadPoolExecutor(min(threads, len(paths))) as pool:
            loaded = list(pool.map(load, paths))
    else:
        loaded = list(map(load, paths))
    pixels, keep = [], []
    dropped: dict[str, list[str]] = {}
    for i, image in enumerate(loaded):
        if isinstance(image, str):
            dropped.setdefault(image, []).append(str(batch["key"][i]))
        else:
            pixels.append(image)
            keep.append(i)
    out = {k: take_rows(v, keep) for k, v in batch.items()}
    size = config.image_size
    out["pixel_values"] = np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.uint8)
    return out, dropped


def _load_or_reason(transform: ImageTransform, path: Path) -> np.ndarray | str:
    """The decoded image, or why it could not be read."""
    try:
        return transform.load(path)
    except FileNotFoundError:
        return "missing_image"
    except Exception:  # any decode failure: counted by the caller, never fatal
        return "unreadable_image"


def encode_batch(batch: dict, config: ExampleConfig, epoch: int | Sequence[int]) -> dict:
    """The paired sequences of each row for ``epoch`` (see :func:`sevlm.sequences.encode_pair`):
    one epoch for the whole batch, or one per row (a batch of a stream of epochs may span two)."""
    builder = sequence_builder(config.tokenizer, config.lexicon, config.max_len)
    rows = len(batch["key"])
    epochs = [int(epoch)] * rows if np.ndim(epoch) == 0 else [int(e) for e in epoch]
    if len(epochs) != rows:
        raise ValueError(f"{len(epochs)} epochs for a batch of {rows} rows")
    images = []
    for key, cell, row_epoch in zip(batch["key"], batch["annotations"], epochs, strict=True):
        emotions, texts = zip(*json.loads(str(cell)), strict=True)
        images.append((emotions, texts, str(key), row_epoch))
    pairs = encode_pairs(builder, images, config.seed)
    out = dict(batch)
    for name in ("input_ids", "labels", "segment_ids", "vad", "vad_mask", "emotion", "has_pair"):
        out[name] = np.stack([p[name] for p in pairs]) if pairs else np.zeros((0,))
    return out


def iter_batches(
    paintings: list[Painting],
    config: ExampleConfig,
    batch_size: int,
    epoch: int = 0,
    features: FeatureCache | None = None,
) -> Iterator[dict]:
    """Model-input batches in one process: the pipeline's transforms without Ray.

    With ``features`` (a frozen encoder's cache), batches carry ``image_features`` instead of
    decoded ``pixel_values``; paintings the cache lacks are left out, as unreadable images are.
    """
    records = painting_records(paintings)
    for start in range(0, len(records["key"]), batch_size):
        batch = {k: v[start : start + batch_size] for k, v in records.items()}
        if features is None:
            decoded, _ = decode_batch(batch, config)
        else:
            decoded, _ = attach_features(batch, features)
        if len(decoded["key"]):
            yield encode_batch(decoded, config, epoch)
