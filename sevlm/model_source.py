"""Where a model comes from: a model directory, an MLflow model URI, or a registered name.

``sevlm evaluate`` and ``sevlm explain`` take any of them. MLflow models are the pyfunc
models that training logs (see :mod:`sevlm.mlflow_model`): the sevlm model directory is one
of their artifacts, downloaded here and loaded like any other (safetensors, nothing
unpickled). The MLflow run that logged the model is kept, so an evaluation can be logged to it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
CHAMPION_ALIAS = "champion"


class ModelNotFound(ValueError):
    """The reference names no model that can be had."""


@dataclass(frozen=True)
class ModelSource:
    """A model reference resolved to a local model directory."""

    ref: str
    """As the user gave it."""
    path: Path
    """The sevlm model directory (config.json, model.safetensors, tokenizer, lexicon)."""
    run_id: str | None = None
    """The MLflow run that logged the model, when it came from MLflow."""


def resolve_model(ref: str, tracking_uri: str | None = None) -> ModelSource:
    """``ref`` as a local model directory: a folder, ``runs:/ID/model``, ``models:/NAME@ALIAS``
    (or ``/VERSION``, or a logged model's ``models:/m-...``), or a registered model's name
    (its ``champion`` alias, else its newest version)."""
    folder = Path(ref).expanduser()
    plain_name = not (os.sep in ref or ref.startswith((".", "~")) or ref.startswith(MLFLOW_SCHEMES))
    if folder.is_dir() and not (plain_name and not _holds_model(folder)):
        return ModelSource(ref, _model_dir(folder, ref), _logged_by(folder))
    if plain_name:  # a registered model's name (a folder of that name here holds no model)
        return resolve_model(_registered(ref, tracking_uri), tracking_uri)
    if not ref.startswith(MLFLOW_SCHEMES):
        raise ModelNotFound(f"--model {ref}: no such folder")
    downloaded = _download(ref, tracking_uri)
    return ModelSource(ref, _model_dir(downloaded, ref), _logged_by(downloaded))


def _not_here(ref: str) -> str:
    """Why a bare name is looked up as a registered model: no folder of that name here, or one
    that holds no model."""
    if Path(ref).expanduser().is_dir():
        return "a folder without a model (no config.json or MLmodel)"
    return "not a folder"


def _holds_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "MLmodel").is_file()


def _model_dir(folder: Path, ref: str) -> Path:
    """The sevlm model directory in ``folder``: itself, or a pyfunc model's ``model`` artifact."""
    if (folder / "config.json").is_file():
        return folder
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        spec = _read_mlmodel(mlmodel)
        try:
            path = spec["flavors"]["python_function"]["artifacts"]["model"]["path"]
        except (KeyError, TypeError):
            path = None
        if isinstance(path, str):
            if not (folder / path).resolve().is_relative_to(folder.resolve()):
                raise ModelNotFound(f"{mlmodel}: its model artifact {path!r} is outside {folder}")
            return folder / path
    raise ModelNotFound(f"{ref}: neither a sevlm model directory nor a sevlm MLflow model")


def _logged_by(folder: Path) -> str | None:
    mlmodel = folder / "MLmodel"
    return _read_mlmodel(mlmodel).get("run_id") if mlmodel.is_file() else None


def _read_mlmodel(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ModelNotFound(f"{path}: cannot be read ({e})") from e
    if not isinstance(spec, dict):
        raise ModelNotFound(f"{path}: not an MLmodel file")
    return spec


def _download(ref: str, tracking_uri: str | None) -> Path:
    import mlflow

    from sevlm.tracking import quiet_artifact_progress, redact_in, resolve_tracking_uri

    quiet_artifact_progress()
    target = tempfile.mkdtemp(prefix="sevlm-model-")
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    uri = resolve_tracking_uri(tracking_uri)
    _check_store(uri, ref)
    mlflow.set_tracking_uri(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=target))
    except Exception as e:  # MlflowException, OSError: either way, no model to be had
        raise ModelNotFound(
            f"{ref}: cannot download the model: {redact_in(str(e), uri)[:300]}"
        ) from e


def _check_store(uri: str, ref: str) -> None:
    """A local store that is not there: looking a model up in it would create an empty one."""
    path = Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("sqlite:///") and not path.is_file():
        raise ModelNotFound(
            f"--model {ref}: {_not_here(ref)}, and there is no MLflow store at {path} to look "
            "it up in (--tracking-uri or MLFLOW_TRACKING_URI names the store)"
        )


def _registered(name: str, tracking_uri: str | None) -> str:
    """``models:/NAME@champion`` when the alias exists, else the newest version's URI."""
    from sevlm.tracking import client_for, redact, redact_in, resolve_tracking_uri

    if "'" in name:
        raise ModelNotFound(f"--model {name!r}: not a folder, nor a registered model name")
    uri = resolve_tracking_uri(tracking_uri)
    _check_store(uri, name)
    client = client_for(uri)
    try:
        client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        return f"models:/{name}@{CHAMPION_ALIAS}"
    except Exception:  # no such alias (or model): look for versions
        pass
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as e:
        raise ModelNotFound(
            f"--model {name}: cannot look it up at {redact(uri)}: {redact_in(str(e), uri)[:300]}"
        ) from e
    if not versions:
        raise ModelNotFound(
            f"--model {name}: {_not_here(name)}, and no registered model of that name at "
            f"{redact(uri)}"
        )
    return f"models:/{name}/{max(int(v.version) for v in versions)}"
