"""The model's configuration: a typed dataclass, YAML presets, ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sevlm.images import CLIP_MEAN, CLIP_STD
from sevlm.tokenizer import OFFLINE_GPT2

GPT2_VOCAB = 50257
PROJECT_TOKENS = 3  # <pad>, <emotion>, <explanation>: see sevlm.tokenizer


@dataclass
class ModelConfig:
    """Everything that defines a SEVLM model's architecture and losses."""

    name: str = "tiny"
    """Preset the config came from (shown in the model card)."""
    vocab_size: int = GPT2_VOCAB + PROJECT_TOKENS
    """Token embeddings: GPT-2's vocabulary plus the project's three tokens."""
    n_layer: int = 2
    """Decoder blocks (distilgpt2: 6)."""
    n_embd: int = 128
    """Decoder width (distilgpt2: 768)."""
    n_head: int = 4
    """Attention heads per decoder block (distilgpt2: 12)."""
    n_positions: int = 64
    """Position embeddings; at least ``max_len``."""
    dropout: float = 0.1
    """Dropout in the decoder (embeddings, attention, residuals)."""
    decoder_weights: str | None = None
    """GPT-2 checkpoint (hub name or folder) to start the decoder from; None: random init."""
    vision: dict[str, Any] = field(default_factory=dict)
    """``transformers.CLIPVisionConfig`` fields of the image encoder."""
    vision_weights: str | None = None
    """CLIP checkpoint (hub name or folder) for the image encoder; None: random init."""
    freeze_vision: bool = False
    """Keep the image encoder fixed (the paper freezes CLIP)."""
    image_mean: tuple[float, float, float] = CLIP_MEAN
    """The encoder's own preprocessing mean (CLIP's, not ImageNet's)."""
    image_std: tuple[float, float, float] = CLIP_STD
    """The encoder's own preprocessing standard deviation."""
    max_len: int = 30
    """Tokens per sequence, ``<bos>`` to ``<eos>``."""
    tokenizer: str = OFFLINE_GPT2
    """Tokenizer name or folder (GPT-2's BPE; see sevlm.tokenizer)."""
    use_vad_embeddings: bool = True
    """Fuse the VAD encoder's output into the explanation's token embeddings."""
    vad_layers: int = 3
    """Layers of the causal VAD encoder."""
    vad_heads: int = 1
    """Attention heads of the VAD encoder (its width is 3)."""
    vad_ffn: int = 128
    """Feed-forward width of the VAD encoder."""
    w_vad: float = 1.0
    """Weight of the VAD-prediction loss; 0 removes the VAD head."""
    w_cl: float = 1.0
    """Weight of the ternary contrastive loss; 0 removes the contrastive head."""
    temperature: float = 1.0
    """Contrastive scores are divided by this (the released code has 1)."""

    def __post_init__(self) -> None:
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)
        checks = [
            (self.vocab_size > GPT2_VOCAB, "vocab_size must exceed GPT-2's 50257"),
            (self.n_layer >= 1 and self.n_head >= 1, "n_layer and n_head must be >= 1"),
            (self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"),
            (self.n_positions >= self.max_len, "n_positions must be >= max_len"),
            (self.max_len >= 8, "max_len must be >= 8"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.vad_layers >= 1 and self.vad_heads >= 1, "vad_layers, vad_heads must be >= 1"),
            (3 % self.vad_heads == 0, "vad_heads must divide the VAD width 3"),
            (self.w_vad >= 0 and self.w_cl >= 0, "w_vad and w_cl must be >= 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (len(self.image_mean) == 3 and len(self.image_std) == 3, "image mean/std need 3"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"model config {self.name!r}: {message}")
        for key in ("hidden_size", "image_size", "patch_size"):
            if key not in self.vision:
                raise ValueError(f"model config {self.name!r}: vision.{key} is required")

    @property
    def image_size(self) -> int:
        return int(self.vision["image_size"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset (``tiny``, ``paper``) from ``sevlm/presets/NAME.yaml``, with overrides."""
        path = resources.files("sevlm") / "presets" / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"no model preset {name!r}; presets: {', '.join(preset_names())}")
        return cls.from_dict({**yaml.safe_load(path.read_text()), **overrides})

    @classmethod
    def from_yaml(cls, path: Path | str, **overrides: Any) -> ModelConfig:
        """A config file: a full config, or ``preset: NAME`` plus the fields to change."""
        values = yaml.safe_load(Path(path).read_text()) or {}
        preset = values.pop("preset", None)
        if preset is not None:
            return cls.preset(preset, **{**values, **overrides})
        return cls.from_dict({**values, **overrides})


def preset_names() -> list[str]:
    folder = resources.files("sevlm") / "presets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["w_cl=0.5", "use_vad_embeddings=false"]`` -> typed values (parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out
