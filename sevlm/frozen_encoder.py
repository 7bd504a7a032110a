"""The frozen image encoder behind a feature cache: which encoder a training worker builds,
the cache key of its features, and computing them in one process
(:func:`cache_features_in_process`; :mod:`sevlm.feature_encoding` does it with Ray Data).

Kept apart from :mod:`sevlm.feature_cache` (the files) and :mod:`sevlm.pipeline` (the
datasets the trainer reads), whose code runs in Ray Data's worker processes and so imports
neither torch nor the model; and free of Ray, for machines that have torch only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sevlm.artemis import ArtemisData
from sevlm.config import ModelConfig
from sevlm.examples import ExampleConfig, decode_batch, painting_records
from sevlm.feature_cache import (
    DTYPE,
    FORMAT_VERSION,
    Dropped,
    cached_or_written,
    data_fingerprint,
)
from sevlm.images import RESIZE
from sevlm.model import ImageEncoder
from sevlm.tokenizer import load_tokenizer
from sevlm.training import autocast_dtype
from sevlm.weights import build_model

VISION_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "image_size", "patch_size", "num_channels", "hidden_act", "layer_norm_eps",
)  # fmt: skip
"""Encoder settings that change its output without changing its weights' shapes."""


# ---- the key ----


def encoder_name(config: ModelConfig) -> str:
    """Where the encoder's weights came from: a hub name or folder, else random init."""
    return config.vision_weights or f"random:{config.name}"


def weights_hash(encoder: ImageEncoder) -> str:
    """SHA-256 of the CLIP tower's tensors (names, dtypes, shapes and bytes, in name order):
    a random-initialised encoder is named by its seed only through this."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.clip.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    encoder: ImageEncoder, example: ExampleConfig, name: str, data: str = ""
) -> dict[str, Any]:
    """Everything a cached feature depends on. ``name``: :func:`encoder_name`; ``data``:
    :func:`data_fingerprint` of the cached images."""
    config = encoder.clip.config
    return {
        "format": FORMAT_VERSION,
        "encoder": name,
        "weights_sha256": weights_hash(encoder),
        "vision": {k: getattr(config, k, None) for k in VISION_FIELDS},
        "image_size": example.image_size,
        "resize": RESIZE,
        "mean": encoder.pixel_mean.flatten().tolist(),
        "std": encoder.pixel_std.flatten().tolist(),
        "dtype": np.dtype(DTYPE).name,
        "data": data,
    }


def training_encoder(config: ModelConfig, seed: int) -> ImageEncoder:
    """The image encoder a training worker builds (``sevlm_train.loop``): the same seed, then
    the same model, so a random-initialised frozen encoder has the same weights, hence key.
    The decoder's pretrained weights are not fetched (they are loaded after every random
    draw, so they change nothing here); the caller's random state is left as it was."""
    tokenizer = load_tokenizer(config.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(dataclasses.replace(config, decoder_weights=None), tokenizer)
    return model.image_encoder


def planned_cache(
    records: Mapping[str, list], example: ExampleConfig, config: ModelConfig, seed: int
) -> tuple[ImageEncoder, dict[str, Any]]:
    """The encoder a training worker builds with ``config`` and ``seed``, and the cache key of
    its features of the images of ``records`` (painting records: ``key`` and ``image``)."""
    encoder = training_encoder(config, seed)
    fingerprint = data_fingerprint(dict(zip(records["key"], records["image"], strict=True)))
    return encoder, cache_key(encoder, example, encoder_name(config), fingerprint)


def encoder_features(encoder: ImageEncoder, pixel_values: Tensor) -> Tensor:
    """What the cache stores: the encoder's tokens before ``proj`` (a trained layer when the
    encoder's width differs from the decoder's)."""
    proj = encoder.proj
    encoder.proj = nn.Identity()
    try:
        return encoder(pixel_values)
    finally:
        encoder.proj = proj


# ---- computing the cache ----


def frozen_features(
    encoder: ImageEncoder, pixels: np.ndarray | torch.Tensor, device: torch.device
) -> np.ndarray:
    """What the feature cache stores for a batch of pixels: fp16 encoder tokens before the
    projection, computed under autocast where ``device`` has it (fp32 on CPU)."""
    dtype = autocast_dtype("auto", device)
    pixels = torch.as_tensor(pixels).to(device, non_blocking=True)
    with torch.no_grad(), torch.autocast(device.type, dtype or torch.float32, dtype is not None):
        features = encoder_features(encoder, pixels)
    return features.to(torch.float16).cpu().numpy()


def cache_features_in_process(
    data: ArtemisData,
    example: ExampleConfig,
    model_cfg: ModelConfig,
    seed: int,
    root: Path | str,
    *,
    splits: tuple[str, ...] = ("train", "val"),
    batch_size: int = 32,
    device: torch.device | None = None,
    printer: Callable[[str], None] = print,
) -> Path:
    """:func:`sevlm.feature_encoding.cache_features` without Ray: the same key, hence the same
    folder, with the images decoded and encoded here, on ``device`` (default: CUDA when there
    is one). Images that cannot be read are left out and recorded in the cache by reason."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    records = painting_records([p for s in splits for p in data.split(s)])
    encoder, key = planned_cache(records, example, model_cfg, seed)
    total = len(records["key"])

    def encode():
        encoder.to(device).eval()
        dropped: Dropped = {}

        def batches():
            for start in range(0, total, batch_size):
                batch = {k: v[start : start + batch_size] for k, v in records.items()}
                decoded, lost = decode_batch(batch, example)
                for reason, keys in lost.items():
                    dropped.setdefault(reason, []).extend(keys)
                if len(decoded["key"]):
                    yield decoded["key"], frozen_features(encoder, decoded["pixel_values"], device)

        return batches(), lambda: dropped

    what = f"paintings ({', '.join(splits)})"
    return cached_or_written(root, key, total, encode, printer, what)
