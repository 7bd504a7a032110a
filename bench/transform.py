"""Benchmark: the image transform, resampling only the centre crop's box against resizing the
whole image and then cropping, side by side in one run (a benchmark, not a test).

    python bench/transform.py [--size 224] [--repeats 5] [--images 40]

For each shape (WikiArt's paintings as ArtEmis uses them are about 600 pixels on the long
side, most of them not square) the script writes ``--images`` JPEGs of smooth colour with
noise, then takes the CPU time per image, median of ``--repeats`` rounds, alternating the two
methods:

- ``whole``: the image's shorter side resized to ``--size`` (bicubic), then the centre crop,
  as :class:`sevlm.images.ImageTransform` did before 2026-12-06;
- ``box``: :class:`sevlm.images.ImageTransform`, which resamples only what the crop keeps.

Both the transform alone (decoded images in memory) and the whole load (``load_rgb``'s
decode, JPEG at reduced scale when far larger, plus the transform). Every ``box`` output must
be that of resizing the whole image across, then down, then cropping, within two levels, or
the script exits non-zero with no table. The table also gives how far ``box`` is from
``whole``: Pillow picks the order of its passes for a whole image itself, and goes down first
for a portrait of 1:2 or taller.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import print_header
from PIL import Image

from sevlm.images import ImageTransform, load_rgb

SHAPES = (
    (600, 450), (450, 600), (300, 400), (600, 338), (360, 640), (300, 700), (512, 512),
    (1200, 900),
)  # fmt: skip
"""Width x height: 4:3, 3:4 (two sizes), 16:9, 9:16, 3:7, square, and a larger 4:3 that JPEG
decodes at half scale."""


def whole_then_crop(size: int, across_first: bool = False) -> Callable[[Image.Image], np.ndarray]:
    """The former transform: resize the whole image (in Pillow's order of passes, or across
    then down), then crop its centre."""
    bicubic = Image.Resampling.BICUBIC

    def transform(image: Image.Image) -> np.ndarray:
        w, h = image.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (new_w - size) // 2, (new_h - size) // 2
        if across_first:
            image = image.resize((new_w, h), bicubic)
        image = image.resize((new_w, new_h), bicubic)
        image = image.crop((left, top, left + size, top + size))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    return transform


def write_images(folder: Path, width: int, height: int, count: int) -> list[Path]:
    rng = np.random.default_rng(width * height)
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        smooth = np.sin(x / (20 + i))[..., None] * 60 + np.cos(y / (15 + i))[..., None] * 60
        pixels = (smooth + 128 + rng.normal(0, 20, (height, width, 3))).clip(0, 255)
        path = folder / f"{width}x{height}-{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def ms_per_image(fn: Callable, items: list) -> float:
    """CPU milliseconds per item (this process's, one thread: a busy machine slows it less)."""
    started = time.process_time()
    for item in items:
        fn(item)
    return 1000 * (time.process_time() - started) / len(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="output side in pixels (224)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--images", type=int, default=40, help="JPEGs per shape (40)")
    args = parser.parse_args(argv)
    if args.size < 8 or args.repeats < 1 or args.images < 1:
        parser.error("--size must be at least 8, --repeats and --images at least 1")
    print_header("sevlm image transform benchmark: the crop's box vs the whole image")
    box, whole = ImageTransform(args.size), whole_then_crop(args.size)
    across_first = whole_then_crop(args.size, across_first=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sevlm-bench-transform-") as tmp:
        for width, height in SHAPES:
            paths = write_images(Path(tmp), width, height, args.images)
            images = [load_rgb(p, draft_size=2 * args.size) for p in paths]
            outputs = [(box(im).astype(int), im) for im in images]
            off = max(int(np.abs(out - across_first(im)).max()) for out, im in outputs)
            if off > 2:
                print(f"error: {width}x{height}: {off} levels from across, then down, then "
                      "the crop", file=sys.stderr)  # fmt: skip
                return 1
            worst = max(int(np.abs(out - whole(im)).max()) for out, im in outputs)
            load_whole = lambda p: whole(load_rgb(p, draft_size=2 * args.size))  # noqa: E731
            times: dict[str, list[float]] = {k: [] for k in ("whole", "box", "lw", "lb")}
            for _ in range(args.repeats):
                times["whole"].append(ms_per_image(whole, images))
                times["box"].append(ms_per_image(box, images))
                times["lw"].append(ms_per_image(load_whole, paths))
                times["lb"].append(ms_per_image(box.load, paths))
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((width, height, med, worst))
    print(f"{args.size} px output, {args.images} JPEGs per shape, median of {args.repeats} rounds")
    print("| source | transform CPU ms: whole | box | whole / box | load + transform CPU ms: "
          "whole | box | whole / box | most levels from whole |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for width, height, med, worst in rows:
        print(f"| {width}x{height} | {med['whole']:.2f} | {med['box']:.2f} | "
              f"{med['whole'] / med['box']:.2f}x | {med['lw']:.2f} | {med['lb']:.2f} | "
              f"{med['lw'] / med['lb']:.2f}x | {worst} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
