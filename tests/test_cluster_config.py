"""cluster.yaml passes Ray's own cluster-config validation, and keeps its promises."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    prepared = _prepared(config)
    assert prepared["provider"]["type"] == "local"
    assert len(prepared["provider"]["worker_ips"]) == prepared["max_workers"]


def test_validation_catches_a_broken_config() -> None:
    import jsonschema

    config = yaml.safe_load(CLUSTER.read_text())
    config["max_wokers"] = 2  # a typo: Ray's schema allows no unknown keys
    with pytest.raises(jsonschema.ValidationError, match="max_wokers"):
        _prepared(config)


def test_dashboard_local_only_and_project_installed() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in yaml.safe_dump(config)
    assert any("pip install -q -e ~/sevlm" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/sevlm": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    # `ray job submit -- python ...` runs with the PATH that `ray start` had
    assert all("export PATH=$HOME/sevlm-env/bin:$PATH;" in c for c in starts if "ray start" in c)
    assert any("/mnt/sevlm" in c for c in config["setup_commands"])  # shared storage
