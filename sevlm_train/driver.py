"""One training run on Ray: check the data, open the MLflow run, fit a TorchTrainer, export.

``run_training`` is what ``sevlm train`` calls, and what each search trial calls with its
own hyperparameters. The run name is deterministic (a hash of the configs and data), so the
same command resumes an interrupted run from its storage instead of starting over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from sevlm.artemis import ArtemisData, DataSource, load_artemis
from sevlm.config import ModelConfig, TrainConfig
from sevlm.examples import ExampleConfig
from sevlm.feature_cache import FeatureCache
from sevlm.feature_encoding import cache_features
from sevlm.lexicon import VADLexicon, read_lexicon
from sevlm.pipeline import TrainStream
from sevlm.sample import cache_root
from sevlm.text import UtterancePrep
from sevlm.tokenizer import load_tokenizer
from sevlm.tracking import (
    DEFAULT_EXPERIMENT,
    ERROR_TAG,
    MetricLogger,
    check_reachable,
    client_for,
    find_or_create_run,
    log_model,
    redact,
    redact_in,
    resolve_tracking_uri,
    without_secrets,
)
from sevlm.weights import (
    WEIGHTS_FILE,
    build_model,
    check_pretrained,
    load_weights,
    save_pretrained,
)
from sevlm_train.loop import train_loop_per_worker

if TYPE_CHECKING:  # only a sweep's driver makes one; ray.tune stays unimported otherwise
    from sevlm_train.halving import RungGate

Printer = Callable[[str], None]
MODEL_URI_TAG = "sevlm.model_uri"
"""Tag of a finished training run: the URI of its logged model."""
ONE_NODE_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
"""Ray Train settings for a run on a one-node cluster (a laptop, a workstation): no watcher
actor for node preemption (the only node is the driver's own: nothing to watch), and the
controller polls its workers every 0.5 s instead of 2 s, so a run's start and end are seen
sooner. Together 2 to 3 s less per sample sweep trial (bench/RESULTS.md)."""


@dataclass
class Scaling:
    """How a run uses the cluster."""

    num_workers: int | None = None
    """Ray Train workers; None: one per GPU of the cluster (1 on a cluster without GPUs)."""
    use_gpu: bool | None = None
    """None: use GPUs when the cluster has them."""
    cpus_per_worker: float | None = None
    """None: 1 with GPUs; on CPU-only machines a share that leaves room for data tasks."""
    gpus_per_worker: float = 1.0
    """GPUs per worker (fractions let small trials share a GPU)."""
    max_failures: int = 2
    """Worker-group restarts before the run fails."""
    concurrent_runs: int = 1
    """Runs sharing the cluster at once (search trials): each sizes itself to its share."""

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker <= 0:
            raise ValueError(f"--gpus-per-worker must be > 0, got {self.gpus_per_worker}")
        if self.max_failures < 0:
            raise ValueError(f"--max-failures must be >= 0, got {self.max_failures}")

    def cpu_share(self, resources: dict[str, float]) -> float:
        """This run's share of the cluster's CPUs."""
        return resources.get("CPU", 1) / self.concurrent_runs


@dataclass
class TrainOutcome:
    name: str
    run_id: str
    model_dir: Path
    model_uri: str
    metrics: dict[str, Any]


def run_name(
    model: ModelConfig, train: TrainConfig, source: DataSource, seed: int, extra: dict[str, Any]
) -> str:
    """``<preset>-<hash>``: the same configs and data give the same name, hence a resume."""
    parts = [model.to_dict(), train.to_dict(), source.describe(), seed, extra]
    blob = json.dumps(parts, sort_keys=True, default=str)
    return f"{model.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def ensure_ray(printer: Printer) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local one; quiet Ray Data's progress bars;
    start Ray Data's stats actor here, outside any placement group."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
        printer(f"ray: {ray.cluster_resources()}")
    ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.util.get_current_placement_group() is None:
        _start_data_stats_actor()


def _start_data_stats_actor() -> None:
    """Ray Data registers every dataset with one detached actor, created by the first
    process that builds a dataset. Created by a Train worker, it lands in the worker group's
    placement group and dies when that group is removed (a trial ends, a run restarts its
    workers); the next dataset creates a new one, and each dataset still running then ends
    with a ``KeyError`` traceback from it ("Unhandled error ... _StatsActor"), two per sample
    sweep. Created here first, it lives as long as the cluster."""
    from ray.data._internal.stats import get_or_create_stats_actor  # no public API for it

    get_or_create_stats_actor()


def scaling_config(
    scaling: Scaling, resources: dict[str, float] | None = None
) -> tuple[ray.train.ScalingConfig, int]:
    """Ray's scaling config and the torch threads per worker, from the cluster's resources."""
    resources = resources if resources is not None else ray.cluster_resources()
    share = scaling.concurrent_runs
    gpus = resources.get("GPU", 0)
    use_gpu = scaling.use_gpu if scaling.use_gpu is not None else gpus > 0
    workers = scaling.num_workers or (
        max(1, math.floor(gpus / share / scaling.gpus_per_worker)) if use_gpu else 1
    )
    total = scaling.cpu_share(resources)
    cpus = scaling.cpus_per_worker
    if cpus is None:  # half a CPU of each share is left to Ray Data's decoding tasks
        cpus = 1.0 if use_gpu else max(0.25, min(1.0, (total - 0.5) / workers))
    per_worker: dict[str, float] = {"CPU": cpus}
    if use_gpu:
        per_worker["GPU"] = scaling.gpus_per_worker
    threads = 1 if use_gpu else max(1, math.floor(total / workers))
    config = ray.train.ScalingConfig(
        num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker
    )
    return config, threads


def data_tasks(scaling: Scaling, resources: dict[str, float] | None = None) -> int:
    """Tasks each of a run's Ray Data stages runs at once: its share of the cluster's CPUs."""
    resources = resources if resources is not None else ray.cluster_resources()
    return max(1, math.floor(scaling.cpu_share(resources)))


def run_training(
    source: DataSource,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    output: Path,
    name: str | None = None,
    scaling: Scaling | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    data_seed: int = 0,
    prep: UtterancePrep | None = None,
    parent_run_id: str | None = None,
    data: ArtemisData | None = None,
    callbacks: list | None = None,
    feature_cache: Path | str | None = None,
    rung_gate: RungGate | None = None,
    printer: Printer = print,
) -> TrainOutcome:
    """Train one model with Ray Train and MLflow; write the best model to ``output/model``.

    ``callbacks`` go to Ray Train's ``RunConfig`` (a search trial passes Tune's reporter).
    With a frozen image encoder (and ``train_cfg.feature_cache``), the images are encoded
    once into a feature cache under ``feature_cache`` (default: :func:`feature_cache_root`
    of the storage) and the workers read that instead of running the encoder. A trial of
    successive halving passes its ``rung_gate``: the workers wait at each rung for its verdict.
    """
    scaling = scaling or Scaling()
    prep = prep or UtterancePrep()
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    check_pretrained(model_cfg)
    if data is None:
        printer("checking the data (every image is decoded once)...")
        data = load_artemis(source, seed=data_seed, decode_images=True, prep=prep, progress=printer)
        printer(data.report.summary())
    if not data.split("train") or not data.split("val"):
        raise ValueError("the data has no training or no validation paintings")
    extra = {"text_prep": dataclasses.asdict(prep), "experiment": experiment}
    name = name or run_name(model_cfg, train_cfg, source, data_seed, extra)
    ensure_ray(printer)
    resources = ray.cluster_resources()  # one reading for the workers and the data tasks
    config, threads = scaling_config(scaling, resources)
    if train_cfg.batch_size % config.num_workers:
        raise ValueError(
            f"train.batch_size {train_cfg.batch_size} does not split evenly among "
            f"{config.num_workers} workers"
        )
    per_worker = train_cfg.batch_size // config.num_workers
    if per_worker % train_cfg.grad_accum:
        raise ValueError(
            f"each of {config.num_workers} workers gets {per_worker} images a step, which "
            f"train.grad_accum {train_cfg.grad_accum} does not divide"
        )
    output = Path(output).absolute()
    storage = storage or str(output / "ray")
    example = ExampleConfig.for_model(model_cfg, source.lexicon, seed=train_cfg.seed)
    features = prepare_feature_cache(
        data, example, model_cfg, train_cfg, feature_cache or feature_cache_root(storage), printer
    )
    stream = TrainStream.create(
        data, example, per_worker=per_worker, world=config.num_workers,
        max_steps=train_cfg.max_steps, tasks=data_tasks(scaling, resources), features=features,
    )  # fmt: skip
    if stream.rows < train_cfg.batch_size:  # a step would hold a painting twice
        raise ValueError(
            f"the training split has {stream.rows} paintings with text, fewer than a step's "
            f"{train_cfg.batch_size}: lower train.batch_size"
        )
    data_info = {**source.describe(), "seed": data_seed, "text_prep": dataclasses.asdict(prep)}
    params = {
        "model": model_cfg.to_dict(),
        "train": train_cfg.to_dict(),
        "data": data_info,
        "scaling": {**dataclasses.asdict(scaling), "num_workers": config.num_workers},
    }
    run_id, created = find_or_create_run(uri, experiment, name, params, parent_run_id)
    if created:
        client_for(uri).log_dict(run_id, data.report.to_dict(), "data_report.json")
    shown = redact(uri)
    printer(f"run {name}: MLflow run {run_id} ({'new' if created else 'resumed'}) at {shown}")

    if uri.startswith(("sqlite:", "file:")) and len(ray.nodes()) > 1:
        printer(f"warning: {shown} is a store on this machine only; workers on other nodes "
                "cannot log to it. Run `mlflow server` and pass --tracking-uri.")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k.startswith(("SEVLM_", "MLFLOW_", "HF_"))}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model": model_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "example": dataclasses.asdict(example),
            "val": data.split("val"),  # checked here; a worker's own read would not decode
            "tracking_uri": uri,
            "run_id": run_id,
            "threads": threads,
            "feature_cache": feature_cache_spec(features),
            "stream": stream,
            "rung_gate": rung_gate,
        },
        scaling_config=config,
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=train_cfg.keep_checkpoints,
                checkpoint_score_attribute=train_cfg.select_metric,
                checkpoint_score_order=train_cfg.select_mode,
            ),
            worker_runtime_env={"env_vars": env} if env else None,
            callbacks=callbacks,
        ),
    )
    try:
        with train_env(one_node=len(ray.nodes()) == 1):
            result = trainer.fit()
        outcome = TrainOutcome(
            name,
            run_id,
            *_finish(result, stream, model_cfg, train_cfg, data_info, output, uri, run_id, printer),
        )
    except BaseException as e:  # Ctrl-C too: the MLflow run must not stay RUNNING
        mark_failed(uri, run_id, e)
        safe = without_secrets(e, uri)
        if safe is e:
            raise
        raise safe from None  # MLflow's error, quoting the password: neither shown nor chained
    printer(f"best checkpoint: step {outcome.metrics.get('step')}, {train_cfg.select_metric} "
            f"{outcome.metrics.get(train_cfg.select_metric)}")  # fmt: skip
    return outcome


@contextmanager
def train_env(one_node: bool) -> Iterator[None]:
    """:data:`ONE_NODE_TRAIN_ENV` in this process's environment while a one-node run starts,
    where Ray Train passes it on to the run's controller and workers. A variable already set
    (by the user) is left as it is; the ones set here are removed afterwards."""
    added = {k: v for k, v in ONE_NODE_TRAIN_ENV.items() if one_node and k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def feature_cache_root(storage: str) -> Path:
    """Where feature caches live: beside the runs in a storage folder (the one place every
    node of a multi-node cluster sees), or in sevlm's cache folder when storage is an object
    store. Keyed folders: runs, trials and sweeps sharing a root share their caches."""
    if "://" in storage:
        return cache_root() / "features"
    return Path(storage).absolute() / "feature_cache"


def prepare_feature_cache(
    data: ArtemisData,
    example: ExampleConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    root: Path | str,
    printer: Printer = print,
) -> Path | None:
    """The feature cache folder of the training and validation images, computed if missing;
    None when the encoder trains (or ``train.feature_cache`` is off): nothing to cache."""
    if not (model_cfg.freeze_vision and train_cfg.feature_cache):
        return None
    if len(ray.nodes()) > 1 and Path(root).absolute().is_relative_to(cache_root()):
        printer(f"warning: the feature cache {root} is on this machine only; workers on other "
                "nodes cannot read it. Pass a folder every node sees.")  # fmt: skip
    return cache_features(data, example, model_cfg, train_cfg.seed, root, printer=printer)


def feature_cache_spec(folder: Path | None) -> dict[str, str] | None:
    """What a worker needs to open the cache with its own encoder's key: the root and the
    data fingerprint (the images' part of the key, which only the driver can compute)."""
    if folder is None:
        return None
    return {"root": str(folder.parent), "data": FeatureCache.load(folder).key["data"]}


def mark_failed(uri: str, run_id: str, error: BaseException | str) -> None:
    """End an MLflow run as failed, with the error as its ``sevlm.error`` tag."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = redact_in(text, uri)  # MLflow's errors quote the URI, password and all
    try:
        client = client_for(uri)
        if client.get_run(run_id).info.status == "KILLED":  # a search stopped it on purpose
            return
        client.set_tag(run_id, ERROR_TAG, text[:4000])
        client.set_terminated(run_id, status="FAILED")
    except Exception as e:  # never hide the error that got us here
        print(f"warning: could not mark MLflow run {run_id} failed: {redact_in(str(e), uri)}")


def _finish(result, stream, model_cfg, train_cfg, data_info, output, uri, run_id, printer) -> tuple:
    """Export the best checkpoint, log it, close the run: ``(model_dir, model_uri, metrics)``."""
    best = result.get_best_checkpoint(train_cfg.select_metric, train_cfg.select_mode)
    best_metrics = next(
        (m for c, m in result.best_checkpoints if best is not None and c.path == best.path),
        result.metrics or {},
    )
    if best is None:
        raise RuntimeError(f"the run finished without a checkpoint ({result.path})")
    metrics = {k: v for k, v in best_metrics.items() if isinstance(v, int | float)}
    model_dir = export_model(best, model_cfg, data_info, output / "model", train_cfg, metrics)
    model_uri = log_model(uri, run_id, model_dir)
    client = client_for(uri)
    client.set_tag(run_id, MODEL_URI_TAG, model_uri)
    # at their steps, through the logger that skips steps the run holds: a finished run started
    # again (or resumed to the same end) adds no second point
    logger = MetricLogger(uri, run_id)
    best = {f"best/{k}": v for k, v in metrics.items() if k.startswith("val/") or k == "step"}
    logger.log(best, int(metrics.get("step", 0)))  # the exported checkpoint's figures
    dropped = {f"pipeline/{reason}": n for reason, n in stream.dropped().items()}
    logger.log(dropped, int((result.metrics or {}).get("step", 0)))
    if logger.dropped:
        printer(f"warning: MLflow did not take {logger.dropped} best/* or pipeline/* metrics; "
                f"the exported model holds its figures ({output / 'model'})")  # fmt: skip
    client.set_terminated(run_id, status="FINISHED")
    return model_dir, model_uri, metrics


def export_model(
    checkpoint: ray.train.Checkpoint,
    model_cfg: ModelConfig,
    data_info: dict[str, Any],
    target: Path,
    train_cfg: TrainConfig,
    metrics: dict[str, Any],
) -> Path:
    """Write a checkpoint's model as a model directory, atomically (a folder swapped in).

    ``data_info`` (the source's paths, split seed, text preparation) is kept in the model's
    config.json, so an evaluation can default to the same data and split."""
    tokenizer = load_tokenizer(model_cfg.tokenizer)
    model = build_model(model_cfg.without_pretrained(), tokenizer)
    with checkpoint.as_directory() as folder:
        load_weights(model, Path(folder) / WEIGHTS_FILE)
    # the config as trained (where the pretrained weights came from), not as rebuilt
    model.config = model_cfg
    lexicon = read_lexicon(data_info["lexicon"]) if data_info.get("lexicon") else VADLexicon({})
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder is for others to read
    try:
        save_pretrained(
            model, staging, tokenizer, lexicon, training=train_cfg.to_dict(), metrics=metrics,
            data=data_info,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    return target
