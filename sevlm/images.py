"""Image decoding and preprocessing, with no Ray: the same functions serve tests and pipelines.

Any mode PIL reads (grayscale, CMYK, palette, RGBA, 16-bit) becomes RGB; transparency is laid
on white. The file's bytes decide the format, so PNG bytes behind a ``.jpg`` name are fine.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PIL import __version__ as PILLOW

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""What ``sevlm explain`` picks up from a folder."""
RESIZE = f"bicubic, shorter side to size, across then down over the crop (Pillow {PILLOW})"
"""How :class:`ImageTransform` resamples, with Pillow's version (whose filters decide the
pixels): part of a feature cache's key (:func:`sevlm.frozen_encoder.cache_key`), so that a
change recomputes cached features."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB; alpha (also a palette's transparency) is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        scaled = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if scaled.max() > 255 else 255.0
        return Image.fromarray((scaled / peak * 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def load_rgb(source: Path | str | bytes, draft_size: int | None = None) -> Image.Image:
    """Decode a file (or its bytes) to RGB. ``draft_size`` lets JPEG decode at reduced scale."""
    if not isinstance(source, bytes) and Path(source).exists() and not Path(source).is_file():
        # a folder, or a FIFO or device, which reading would block on (a missing file is
        # Image.open's FileNotFoundError, which callers report as missing)
        raise OSError(f"{source}: not a regular file")
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        if draft_size is not None:
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return to_rgb(image)


def check_image(path: Path | str) -> bool:
    """Whether the file decodes as an image (a full decode, at reduced scale for JPEG)."""
    try:
        load_rgb(path, draft_size=256)
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return False
    return True


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop, to uint8 pixels.

    Scaling and normalizing are the image encoder's (:class:`sevlm.model.ImageEncoder`), on
    the device it runs on: pixels cross processes and reach the GPU at a quarter of float32's
    bytes, and data workers skip three float passes over every image (``bench/RESULTS.md``).
    """

    size: int = 224
    """Output height and width in pixels."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"image size must be >= 8, got {self.size}")

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A uint8 array ``[3, size, size]``: the shorter side resized to ``size`` (bicubic),
        the centre cut out.

        Only what the crop keeps is resampled: across, over the columns of the crop and the
        rows that the second pass reads, then down. The pixels are those of resizing the whole
        image across, then down, then cropping, within two levels (tests/test_artemis.py), for
        less work on a painting that is not square (bench/transform.py), and a strip (1 x
        200000 pixels, say) never becomes a huge image on the way. Two calls fix the order of
        the passes, which Pillow otherwise picks for itself: it goes down first for some
        shapes (a whole portrait of 1:2 or taller, a box of some others), and rounding the
        intermediate image at the other stage moves pixels by up to about 20 levels.
        """
        image = to_rgb(image)
        w, h, size = *image.size, self.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (new_w - size) // 2, (new_h - size) // 2
        x0, x1 = left * w / new_w, (left + size) * w / new_w  # the crop's box in the image
        y0, y1 = top * h / new_h, (top + size) * h / new_h
        reach = math.ceil(2 * max(h / new_h, 1)) + 1  # bicubic: 2 rows a side, times the downscale
        r0, r1 = max(0, math.floor(y0) - reach), min(h, math.ceil(y1) + reach)
        rows = image if (r0, r1) == (0, h) else image.crop((0, r0, w, r1))
        bicubic = Image.Resampling.BICUBIC
        image = rows.resize((size, r1 - r0), bicubic, box=(x0, 0, x1, r1 - r0))  # across
        image = image.resize((size, size), bicubic, box=(0, y0 - r0, size, y1 - r0))  # down
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def load(self, path: Path | str) -> np.ndarray:
        """Decode and transform a file (JPEG decodes at reduced scale when far larger)."""
        return self(load_rgb(path, draft_size=2 * self.size))
