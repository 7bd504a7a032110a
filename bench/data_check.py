"""Benchmark ``sevlm data check`` on a generated ArtEmis-format data set (a benchmark, not a test).

For each size (by default 5,000 and 20,000 paintings, about 5 annotations each, 48-pixel
JPEGs) this script:

1. writes the data set with :func:`sevlm.sample.write_sample` in the real ArtEmis layout
   (timed on its own, apart from the check);
2. injects known faults: ``--bad`` rows each of an unknown emotion, an empty utterance, a
   path that leaves the images root and a missing image, appended to the CSV, and ``--bad``
   image files overwritten with bytes that do not decode (garbage, empty, truncated JPEG);
3. runs ``sevlm data check --data DIR --report DIR/report.json`` as a child process (the
   console script of this interpreter's environment), measuring its wall time and its own
   peak RSS (``os.wait4`` returns the rusage of that one child);
4. checks the report against what was injected and exits non-zero on any mismatch, so no
   figure is printed from a broken run.

Two sizes in one invocation show how peak memory grows with the input. Run::

    python bench/data_check.py [--paintings 20000] [--small 5000] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from machine import print_header

from sevlm.artemis import IMAGE_EXTENSION, IMAGES_DIR_NAME, SKIP_REASONS, V1_CSV_NAME
from sevlm.sample import write_sample

SEVLM = Path(sys.executable).parent / "sevlm"


class BenchError(RuntimeError):
    """The run is broken: its figures must not be reported."""


@dataclass
class Injected:
    """What was written into a data set, hence what the report must say."""

    rows_clean: int
    paintings: int
    skipped: dict[str, int]
    corrupt_paintings: int

    @property
    def rows_total(self) -> int:
        return self.rows_clean + sum(
            self.skipped[r] for r in SKIP_REASONS if r != "unreadable_image"
        )

    @property
    def rows_kept(self) -> int:
        return self.rows_clean - self.skipped["unreadable_image"]


@dataclass
class Result:
    paintings: int
    rows: int
    images: int
    generate_s: float
    wall_s: float
    checked_s: float | None
    decode_s: float | None
    peak_rss_kib: int


# ---------------------------------------------------------------------------------------------
# Generating and damaging a data set


def inject_faults(root: Path, bad: int, seed: int) -> Injected:
    """Append ``bad`` rows per row-level skip reason and corrupt ``bad`` images under ``root``."""
    rng = random.Random(seed)
    csv_path = root / V1_CSV_NAME
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ())
        rows = list(reader)
    per_painting = Counter((r["art_style"], r["painting"]) for r in rows)
    keys = sorted(per_painting)
    n_corrupt = min(bad, len(keys) // 10)
    corrupt = rng.sample(keys, n_corrupt)
    healthy = sorted(set(keys) - set(corrupt))
    styles = sorted({style for style, _ in keys})

    for i, (style, name) in enumerate(corrupt):
        # On disk the names are NFD (as real downloads are); the CSV spells them NFC.
        path = (
            root / IMAGES_DIR_NAME / style / (unicodedata.normalize("NFD", name) + IMAGE_EXTENSION)
        )
        if not path.is_file():
            raise BenchError(f"expected image to corrupt is missing: {path}")
        kind = i % 3
        if kind == 0:
            path.write_bytes(b"not an image\n" + rng.randbytes(2048))
        elif kind == 1:
            path.write_bytes(b"")
        else:  # a real JPEG cut short: the header reads, the pixel data does not
            data = path.read_bytes()
            path.write_bytes(data[: max(len(data) // 3, 200)])

    def valid() -> tuple[str, str]:
        return rng.choice(healthy)

    emotions = ("awe", "sadness", "fear", "contentment")
    extra: list[dict[str, str]] = []
    for i in range(bad):
        style, name = valid()
        label = ("boredom", "joy", "", "awe and fear")[i % 4]
        extra.append(row_of(columns, style, name, label, f"an unknown label, row {i}"))
    for i in range(bad):
        style, name = valid()
        utterance = ("", "   ", "\t")[i % 3]
        extra.append(row_of(columns, style, name, emotions[i % 4], utterance))
    for i in range(bad):
        style, name = valid()
        style, name = (
            (style, f"../../escape-{i}"),
            ("..", name),
            (style, f"sub/dir-{i}"),
        )[i % 3]
        extra.append(row_of(columns, style, name, emotions[i % 4], f"a path outside, row {i}"))
    for i in range(bad):
        style = styles[i % len(styles)] if i % 2 else "No_Such_Style"
        extra.append(
            row_of(columns, style, f"no-such-painting-{i}", emotions[i % 4], f"missing, row {i}")
        )
    rng.shuffle(extra)
    with csv_path.open("a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=columns).writerows(extra)

    return Injected(
        rows_clean=len(rows),
        paintings=len(keys),
        skipped={
            "unknown_emotion": bad,
            "empty_utterance": bad,
            "invalid_path": bad,
            "missing_image": bad,
            "unreadable_image": sum(per_painting[k] for k in corrupt),
        },
        corrupt_paintings=n_corrupt,
    )


def row_of(columns: list[str], style: str, name: str, emotion: str, utterance: str) -> dict:
    row = dict.fromkeys(columns, "")
    row.update(art_style=style, painting=name, emotion=emotion, utterance=utterance)
    if "repetition" in row:
        row["repetition"] = "5"
    return row


# ---------------------------------------------------------------------------------------------
# Running the check


def run_measured(command: list[str], log_dir: Path, tag: str) -> tuple[int, float, int, str]:
    """Run a child; (exit code, wall seconds, its own peak RSS in KiB, stdout + stderr)."""
    out_path, err_path = log_dir / f"{tag}.stdout", log_dir / f"{tag}.stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    text = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    rss_kib = usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return child.returncode, wall, rss_kib, text


def verify(report: dict, expected: Injected) -> None:
    problems = []

    def same(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what}: report says {got!r}, injected {want!r}")

    same("rows_total", report.get("rows_total"), expected.rows_total)
    same("rows_kept", report.get("rows_kept"), expected.rows_kept)
    same(
        "paintings_kept",
        report.get("paintings_kept"),
        expected.paintings - expected.corrupt_paintings,
    )
    same("images_decoded", report.get("images_decoded"), True)
    for reason in SKIP_REASONS:
        same(f"skipped.{reason}", report.get("skipped", {}).get(reason), expected.skipped[reason])
    if problems:
        raise BenchError(
            "the report does not match the injected faults:\n  " + "\n  ".join(problems)
        )


def bench_size(paintings: int, root: Path, args: argparse.Namespace) -> Result:
    print(f"\n== {paintings} paintings: {root}", flush=True)
    started = time.perf_counter()
    summary = write_sample(root, paintings=paintings, seed=args.seed, image_size=args.image_size)
    injected = inject_faults(root, args.bad, args.seed)
    generate_s = time.perf_counter() - started
    n_files = sum(1 for _ in (root / IMAGES_DIR_NAME).rglob("*" + IMAGE_EXTENSION))
    if n_files != summary.paintings:
        raise BenchError(f"{n_files} image files on disk for {summary.paintings} paintings")
    print(
        f"generated in {generate_s:.1f} s: {injected.rows_clean} clean rows + "
        f"{injected.rows_total - injected.rows_clean} bad rows = {injected.rows_total} rows; "
        f"{n_files} images ({injected.corrupt_paintings} corrupted, "
        f"{injected.skipped['unreadable_image']} rows on them)",
        flush=True,
    )

    report_path = root / "report.json"
    command = [str(SEVLM), "data", "check", "--data", str(root), "--report", str(report_path)]
    print("running: " + shlex.join(command), flush=True)
    code, wall, rss_kib, output = run_measured(command, root, "check")
    if code != 0:
        raise BenchError(f"sevlm data check exited {code}:\n{output[-4000:]}")
    if not report_path.is_file():
        raise BenchError(f"no report written at {report_path}:\n{output[-4000:]}")
    verify(json.loads(report_path.read_text()), injected)
    print("report matches the injected faults", flush=True)

    checked = re.search(r"checked in ([0-9.]+) s", output)
    decoded = re.findall(r"decoded (\d+)/(\d+) images \((\d+)/s\)", output)
    decode_s = None
    if decoded and int(decoded[-1][2]) > 0:
        decode_s = int(decoded[-1][1]) / int(decoded[-1][2])
    return Result(
        paintings=paintings,
        rows=injected.rows_total,
        images=n_files,
        generate_s=generate_s,
        wall_s=wall,
        checked_s=float(checked.group(1)) if checked else None,
        decode_s=decode_s,
        peak_rss_kib=rss_kib,
    )


# ---------------------------------------------------------------------------------------------
# Reporting


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(results: list[Result], baseline_kib: int) -> None:
    header = (
        "paintings",
        "rows",
        "images",
        "generate s",
        "check wall s",
        "in-command s",
        "decode s",
        "rows/s",
        "images/s",
        "peak RSS MiB",
    )
    lines = [header]
    for r in results:
        lines.append(
            (
                str(r.paintings),
                str(r.rows),
                str(r.images),
                f"{r.generate_s:.1f}",
                f"{r.wall_s:.2f}",
                fmt(r.checked_s, ".1f"),
                fmt(r.decode_s, ".2f"),
                f"{r.rows / r.wall_s:,.0f}",
                f"{r.images / r.wall_s:,.0f}",
                f"{r.peak_rss_kib / 1024:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print()
    for n, line in enumerate(lines):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    print(
        f"\nbaseline: `sevlm --help` peak RSS {baseline_kib / 1024:.1f} MiB (interpreter + imports)"
    )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        d_rows = large.rows - small.rows
        if d_rows:
            per_row = (large.peak_rss_kib - small.peak_rss_kib) * 1024 / d_rows
            print(
                f"peak RSS growth {small.paintings} -> {large.paintings} paintings: "
                f"{(large.peak_rss_kib - small.peak_rss_kib) / 1024:+.1f} MiB for "
                f"{d_rows:+d} rows ({per_row:.0f} bytes per row)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paintings", type=int, default=20000, help="the large size (20000)")
    parser.add_argument(
        "--small", type=int, default=5000, help="a second, smaller size (5000; 0: skip it)"
    )
    parser.add_argument("--image-size", type=int, default=48, help="image side in pixels (48)")
    parser.add_argument("--bad", type=int, default=50, help="faults injected per skip reason (50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where to write (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data sets")
    args = parser.parse_args(argv)

    if not SEVLM.is_file():
        print(f"error: no sevlm console script at {SEVLM}", file=sys.stderr)
        return 2
    sizes = sorted({s for s in (args.small, args.paintings) if s > 0})
    if args.workdir is None:
        workdir, own_workdir = Path(tempfile.mkdtemp(prefix="sevlm-bench-")), True
    else:
        workdir, own_workdir = args.workdir, False
        workdir.mkdir(parents=True, exist_ok=True)

    print_header("sevlm data check benchmark")
    print(f"workdir:  {workdir}")

    roots = [workdir / f"paintings-{n}" for n in sizes]
    try:
        code, _, baseline_kib, output = run_measured([str(SEVLM), "--help"], workdir, "help")
        if code != 0:
            raise BenchError(f"sevlm --help exited {code}:\n{output[-2000:]}")
        results = [bench_size(n, root, args) for n, root in zip(sizes, roots, strict=True)]
        print_table(results, baseline_kib)
    except BenchError as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"\nkept: {workdir}")
        elif own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)
            for name in ("help.stdout", "help.stderr"):
                (workdir / name).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
