"""A sweep's settings, saved beside Tune's state, and the names that tie a sweep together:
its storage folder, its MLflow parent run and each trial's run name.

``--resume`` needs nothing but the storage path (and, for object stores, the name): the spec
brings back the data, configs, search space, resources and tracking store. A tracking URI's
``user:password@`` is not saved (the storage may be a shared bucket): ``--resume`` gets it
again from ``--tracking-uri``, or from MLflow's own credential variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs
import ray.tune

from sevlm.artemis import DataSource
from sevlm.config import ModelConfig, SearchConfig, TrainConfig, metric_mode, override_configs
from sevlm.text import UtterancePrep
from sevlm.tracking import (
    find_or_create_run,
    redact,
    resolve_tracking_uri,
    without_credentials,
)
from sevlm_train.driver import Scaling

SPEC_FILE = "sevlm_sweep.json"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass
class SweepSpec:
    """Everything a sweep needs, saved with it so that ``--resume`` rebuilds the same sweep."""

    name: str
    source: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    search: dict[str, Any]
    scaling: dict[str, Any]
    storage: str
    output: str
    tracking_uri: str
    experiment: str
    register_as: str
    seed: int = 0
    prep: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def search_config(self) -> SearchConfig:
        return SearchConfig(**self.search)

    @property
    def configs(self) -> tuple[ModelConfig, TrainConfig]:
        return ModelConfig.from_dict(self.model), TrainConfig(**self.train)

    @property
    def metric(self) -> str:
        return self.train["select_metric"]

    @property
    def mode(self) -> str:
        return self.train["select_mode"]

    @property
    def trials_storage(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}-trials"

    def redacted(self) -> SweepSpec:
        """This spec fit to store: its tracking URI without the password."""
        return dataclasses.replace(self, tracking_uri=redact(self.tracking_uri))


def make_spec(
    name: str,
    source: DataSource,
    model: ModelConfig,
    train: TrainConfig,
    search: SearchConfig,
    scaling: Scaling,
    *,
    storage: str,
    output: Path,
    tracking_uri: str | None,
    experiment: str,
    register_as: str,
    seed: int,
    prep: UtterancePrep,
) -> SweepSpec:
    """A new sweep's spec: trials use ``search.trial`` settings and select by the metric."""
    model, train = override_configs(model, train, search.trial)
    metric = search.metric or train.select_metric
    mode = metric_mode(metric, search.mode, "search")
    model, train = override_configs(model, train, {"select_metric": metric, "select_mode": mode})
    return SweepSpec(
        name=name,
        source=source.describe(),
        model=model.to_dict(),
        train=train.to_dict(),
        search=search.to_dict(),
        scaling=dataclasses.asdict(scaling),
        storage=storage if "://" in storage else str(Path(storage).absolute()),
        output=str(Path(output).absolute()),
        tracking_uri=resolve_tracking_uri(tracking_uri),
        experiment=experiment,
        register_as=register_as,
        seed=seed,
        prep=dataclasses.asdict(prep),
    )


# ---- the sweep's folder in storage (local, NFS or s3://) ----


def storage_fs(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    return pyarrow.fs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage)))


def save_spec(spec: SweepSpec) -> None:
    """Write the spec into the sweep's folder, its tracking URI redacted."""
    fs, root = storage_fs(spec.storage)
    fs.create_dir(f"{root}/{spec.name}", recursive=True)
    with fs.open_output_stream(f"{root}/{spec.name}/{SPEC_FILE}") as f:
        f.write(json.dumps(dataclasses.asdict(spec.redacted()), indent=2).encode())


def load_spec(storage: str, name: str | None) -> SweepSpec:
    """A saved sweep's spec: the one named, else the newest sweep in ``storage``."""
    fs, root = storage_fs(storage)
    if name is None:
        found = [
            info
            for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
            if info.type == pyarrow.fs.FileType.Directory
            and fs.get_file_info(f"{info.path}/{SPEC_FILE}").type == pyarrow.fs.FileType.File
        ]
        if not found:
            raise ValueError(f"--resume: no sweep to resume in {storage}")
        if len(found) > 1 and any(info.mtime_ns is None for info in found):
            raise ValueError(f"--resume: {storage} cannot tell which sweep is newest (object "
                             "stores keep no folder times); give --name")  # fmt: skip
        name = max(found, key=lambda info: info.mtime_ns or 0).base_name
    path = f"{root}/{name}/{SPEC_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise ValueError(f"--resume: no sweep named {name!r} in {storage}")
    with fs.open_input_stream(path) as f:
        return SweepSpec(**json.loads(f.read()))


def resume_tracking_uri(saved: str, given: str | None) -> str:
    """The tracking URI of a resumed sweep: its saved one, with the credentials it lost on save.

    A ``given`` URI with credentials brings them (it must name the saved store); otherwise a
    redacted saved URI needs ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``.
    """
    if given and redact(given) != given:
        if redact(given) != redact(saved):
            raise ValueError(f"--resume --tracking-uri {redact(given)}: the sweep's tracking "
                             f"store is {redact(saved)}")  # fmt: skip
        return given
    parts = urlsplit(saved)
    if not parts.netloc.startswith("***@"):
        return saved
    server = parts.scheme in ("http", "https")  # MLflow's variables are for its server only
    if server and all(os.environ.get(name) for name in CREDENTIAL_VARS):
        return without_credentials(saved)
    better = (", or better, set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (no URI "
              "then holds them)") if server else ""  # fmt: skip
    raise ValueError(
        f"--resume: the sweep's tracking store {saved} needs credentials, which are not saved "
        f"with the sweep: pass --tracking-uri with them again{better}"
    )


def sweep_exists(storage: str, name: str) -> bool:
    fs, root = storage_fs(storage)
    return fs.get_file_info(f"{root}/{name}").type != pyarrow.fs.FileType.NotFound


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def parent_run(spec: SweepSpec, created: list[bool] | None = None) -> str:
    """The sweep's MLflow run (found by name, or created with the search's settings)."""
    params = {
        "search": {**spec.search, "searcher": "optuna.TPE", "seed": spec.seed},
        "model": spec.model,
        "train": spec.train,
        "data": spec.source,
    }
    run_id, new = find_or_create_run(spec.tracking_uri, spec.experiment, spec.name, params)
    if created is not None:
        created.append(new)
    return run_id


def tune_space(search: SearchConfig) -> dict[str, Any]:
    """The config's space as Tune distributions."""
    make = {
        "uniform": ray.tune.uniform,
        "loguniform": ray.tune.loguniform,
        "randint": ray.tune.randint,
        "choice": lambda *values: ray.tune.choice(list(values)),
    }
    return {
        key: make[kind](*args) for key, spec in search.space.items() for kind, args in spec.items()
    }
