"""Shared fixtures: the embedded sample, a model trained on it, a tiny hand-made ArtEmis
folder, a local Ray."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Tests never reach a model hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from PIL import Image

from sevlm.artemis import IMAGES_DIR_NAME, V1_CSV_NAME
from sevlm.sample import SampleSummary, write_sample

HEADER = ("art_style", "painting", "emotion", "utterance", "repetition")


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    """A 2-CPU local Ray for one test module, offline, without dashboard or progress bars."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    """The default embedded sample, written once per test session (read-only for tests)."""
    return write_sample(tmp_path_factory.mktemp("sample"))


@dataclass(frozen=True)
class TrainedOnSample:
    """What ``sevlm train`` left after training the tiny preset on the embedded sample."""

    model: Path
    """The exported model directory."""
    stdout: str
    """What the command printed: the model's folder and URI, its figures."""
    stderr: str
    """Its progress: the data report, Ray's and the workers' logs, the checkpoint it picked."""
    minutes: float
    """Its wall time, Ray start to export."""


@pytest.fixture(scope="session")
def trained_on_sample(sample, tmp_path_factory: pytest.TempPathFactory) -> TrainedOnSample:
    """``sevlm train`` on the sample with the tiny preset's defaults, as a user runs it: about
    four minutes on 2 cores, so once per session, for the tests of what it learned and of
    evaluating and explaining it."""
    root = tmp_path_factory.mktemp("trained")
    ray_tmp = tempfile.mkdtemp(prefix="sevlm-ray-", dir="/tmp")  # Unix sockets: short paths
    started = time.perf_counter()
    done = subprocess.run(
        [Path(sys.executable).parent / "sevlm", "train", "--data", str(sample.out),
         "--preset", "tiny", "--output", str(root / "run"),
         "--tracking-uri", f"sqlite:///{root}/mlflow.db"],
        capture_output=True, text=True, env={**os.environ, "RAY_TMPDIR": ray_tmp}, cwd=root,
        timeout=1500,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"sevlm train exited {done.returncode}:\n{done.stderr[-3000:]}")
    minutes = (time.perf_counter() - started) / 60
    return TrainedOnSample(root / "run" / "model", done.stdout, done.stderr, minutes)


def write_csv(path: Path, rows: list[tuple], header: tuple[str, ...] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_image(path: Path, mode: str = "RGB", fmt: str = "JPEG", size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"RGB": (200, 30, 30), "L": 128, "CMYK": (0, 200, 200, 0), "RGBA": (9, 9, 9, 0)}
    image = Image.new(mode if mode != "P" else "RGB", (size, size), colour.get(mode, (1, 2, 3)))
    if mode == "P":
        image = image.convert("P")
    image.save(path, format=fmt)
    return path


@pytest.fixture
def artemis_dir(tmp_path: Path) -> Path:
    """An empty folder in the ArtEmis layout; tests add images and write the CSV."""
    (tmp_path / IMAGES_DIR_NAME).mkdir()
    return tmp_path


def csv_path(root: Path) -> Path:
    return root / V1_CSV_NAME
