"""The model's configuration: a typed dataclass, YAML presets, ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
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
            (all(v > 0 for v in self.image_std), "image_std must be > 0"),
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

    def without_pretrained(self) -> ModelConfig:
        """The same architecture with no weights to fetch: for when a checkpoint or model
        directory holds them all."""
        return dataclasses.replace(self, decoder_weights=None, vision_weights=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset's model config (``sevlm/presets/NAME.yaml``), with fields changed."""
        return _from_dict(cls, {**preset_values(name)["model"], **overrides})


COMPILE_BACKENDS = ("auto", "off", "inductor", "aot_eager")


METRIC_MODES = {
    "val/loss": "min",
    "val/lm_loss": "min",
    "val/vad_loss": "min",
    "val/cl_loss": "min",
    "val/emotion_accuracy": "max",
    "val/bleu1": "max",
    "val/bleu4": "max",
}
"""The validation metrics that can pick a checkpoint or a sweep's trials, and which way each
is better: max (higher) or min (lower)."""


def metric_mode(metric: str, mode: str | None, where: str) -> str:
    """``metric``'s direction, checked against ``mode`` where one is given: a mode against
    the metric would keep the worst checkpoint and register the worst trial."""
    if metric not in METRIC_MODES:
        raise ValueError(f"{where}: no metric {metric!r}; one of {', '.join(METRIC_MODES)}")
    better = METRIC_MODES[metric]
    if mode not in (None, better):
        way = "higher" if better == "max" else "lower"
        raise ValueError(f"{where}: a {way} {metric} is better, so its mode is {better}, not "
                         f"{mode!r} (leave the mode out)")  # fmt: skip
    return better


@dataclass
class TrainConfig:
    """How a model is trained. Defaults follow the released recipe."""

    max_steps: int = 2000
    """Optimizer steps in all."""
    batch_size: int = 32
    """Images per optimizer step across all workers (each gives two sequences)."""
    lr: float = 2e-5
    """Learning rate of the decoder and heads."""
    lr_vad: float = 4e-5
    """Learning rate of the VAD encoder."""
    weight_decay: float = 0.0
    """AdamW weight decay (none in the released recipe)."""
    warmup_steps: int = 0
    """Linear warm-up before the linear decay to zero (none in the released recipe)."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this; 0 turns clipping off."""
    precision: str = "auto"
    """auto (bf16 on Ampere+ GPUs, fp16 + grad scaler on older ones, fp32 on CPU) or a dtype."""
    grad_accum: int = 1
    """Micro-batches per optimizer step: each worker's batch is split in this many parts, each
    run forward and backward in turn, so a batch too big for the GPU keeps its size."""
    compile: str = "auto"
    """auto (inductor on CUDA, off elsewhere), off, or the ``torch.compile`` backend the model
    runs through: inductor (generates code; about a minute of warm-up, see bench/RESULTS.md)
    or aot_eager (traces only)."""
    val_every: int = 200
    """Steps between validations (each writes a checkpoint)."""
    val_max_images: int | None = None
    """Evaluate on at most this many validation images (None: all)."""
    max_new_tokens: int = 25
    """Longest generated continuation during validation."""
    select_metric: str = "val/bleu4"
    """The metric that picks the best checkpoint (the paper: validation BLEU-4); one of
    :data:`METRIC_MODES`."""
    select_mode: str | None = None
    """max or min; None: the metric's own direction (a contrary one is an error)."""
    early_stop: int = 10
    """Stop after this many validations without improvement; 0 never stops early."""
    keep_checkpoints: int = 2
    """Checkpoints kept besides the latest, best first."""
    log_every: int = 10
    """Steps between training-metric logs."""
    seed: int = 0
    """Seed of initialisation, data order and pairing."""
    feature_cache: bool = True
    """With a frozen image encoder, encode every image once into a cache read by all runs."""

    def __post_init__(self) -> None:
        self.select_mode = metric_mode(self.select_metric, self.select_mode, "train config")
        checks = [
            (self.max_steps >= 1, "max_steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.compile in COMPILE_BACKENDS, f"compile: one of {', '.join(COMPILE_BACKENDS)}"),
            (
                self.batch_size % max(self.grad_accum, 1) == 0,
                "batch_size: a multiple of grad_accum",
            ),
            (self.lr > 0 and self.lr_vad > 0, "learning rates must be > 0"),
            (self.val_every >= 1 and self.log_every >= 1, "val_every, log_every must be >= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision: auto|fp32|bf16|fp16"),
            (self.early_stop >= 0 and self.keep_checkpoints >= 1, "early_stop >= 0, keep >= 1"),
            (self.grad_clip >= 0 and self.weight_decay >= 0, "grad_clip, weight_decay >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"train config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the selection metric beats ``best``."""
        if best is None:
            return True
        return value > best if self.select_mode == "max" else value < best


DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")

DEFAULT_SPACE: dict[str, dict[str, list]] = {
    "temperature": {"loguniform": [0.01, 1.0]},
    "w_cl": {"uniform": [0.0, 2.0]},
    "w_vad": {"uniform": [0.0, 2.0]},
}
"""The search space: contrastive temperature, contrastive and VAD loss weights."""


@dataclass
class SearchConfig:
    """A hyperparameter search (``tune/search.py``): the space, the searcher, the scheduler."""

    space: dict[str, dict[str, list]] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    """Field -> ``{distribution: [args]}``: uniform/loguniform ``[low, high]``, randint
    ``[low, high)``, choice ``[values]``. Keys are model or train fields (``lr``, ``train.lr``)."""
    num_samples: int = 16
    """Trials to run."""
    max_concurrent: int | None = None
    """Trials at once; None: as many as the cluster holds."""
    metric: str | None = None
    """The metric to optimise (one of :data:`METRIC_MODES`); None: the train config's
    ``select_metric``."""
    mode: str | None = None
    """max or min; None: the metric's own direction (a contrary one is an error)."""
    startup_trials: int | None = None
    """TPE's random start-up trials; None: half the trials, at most 10 (Optuna's default)."""
    scheduler: str = "halving"
    """halving: every trial of a rung waits for the others, the best go on (reproducible);
    asha: Ray's ASHA, each trial judged on arrival against those before it (no waiting)."""
    grace_period: int = 1
    """Validations every trial gets before it may be stopped (the first rung)."""
    reduction_factor: float = 2.0
    """1 / the fraction of trials that go on at each rung."""
    trial: dict[str, Any] = field(default_factory=dict)
    """Settings every trial uses instead of the preset's (e.g. a shorter ``max_steps``)."""

    def __post_init__(self) -> None:
        if self.num_samples < 1 or (self.max_concurrent is not None and self.max_concurrent < 1):
            raise ValueError("search config: num_samples and max_concurrent must be >= 1")
        if self.startup_trials is not None and self.startup_trials < 0:
            raise ValueError("search config: startup_trials must be >= 0")
        if self.metric is not None:
            metric_mode(self.metric, self.mode, "search config")
        elif self.mode not in (None, "max", "min"):
            raise ValueError("search config: mode must be max or min")
        if self.scheduler not in ("halving", "asha"):
            raise ValueError(f"search config: scheduler must be halving or asha, not "
                             f"{self.scheduler!r}")  # fmt: skip
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ValueError("search config: grace_period >= 1 and reduction_factor > 1")
        if not self.space:
            raise ValueError("search config: the space is empty")
        self.space = {key: _check_dimension(key, spec) for key, spec in self.space.items()}

    @property
    def tpe_startup_trials(self) -> int:
        if self.startup_trials is not None:
            return self.startup_trials
        return min(10, max(1, self.num_samples // 2))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_dimension(key: str, spec: Any) -> dict[str, list]:
    """``{"loguniform": [0.01, 1]}``, checked, with numeric bounds as numbers."""
    where = f"search space {key!r}"
    field_of(key, where)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"{where}: write one distribution, like {{loguniform: [0.01, 1.0]}}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"{where}: unknown distribution {kind!r}; one of {DISTRIBUTIONS}")
    if not isinstance(args, list | tuple) or not args:
        raise ValueError(f"{where}: {kind} needs a list")
    if kind == "choice":
        return {kind: list(args)}
    if len(args) != 2:
        raise ValueError(f"{where}: {kind} needs [low, high]")
    try:  # YAML 1.1 reads 1e-5 as text
        low, high = (int(a) for a in args) if kind == "randint" else (float(a) for a in args)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: bounds must be numbers, got {args}") from None
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"{where}: need low < high (and low > 0 for loguniform), got {args}")
    return {kind: [low, high]}


def _from_dict(cls, values: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    section = cls.__name__.removesuffix("Config").lower()
    return cls(**{k: _typed(f"{section}.{k}", hints[k], v) for k, v in values.items()})


def _typed(where: str, hint: Any, value: Any) -> Any:
    """``value`` as a field of type ``hint`` takes it, or a clear error: YAML and overrides
    give words where numbers go, and YAML 1.1 reads ``1e-5`` as text (taken as a number)."""
    if isinstance(hint, types.UnionType):  # X | None
        if value is None and type(None) in hint.__args__:
            return None
        arms = [arm for arm in hint.__args__ if arm is not type(None)]
        if len(arms) != 1:
            return value
        hint = arms[0]
    origin = typing.get_origin(hint) or hint
    ok = {
        float: lambda v: _number(v) is not None,
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, list | tuple) and all(_number(x) is not None for x in v),
        dict: lambda v: isinstance(v, dict),
    }.get(origin, lambda v: True)
    if not ok(value):
        expected = getattr(hint, "__name__", str(hint))
        raise ValueError(f"{where}: {value!r} is not {'an' if expected == 'int' else 'a'} "
                         f"{expected if origin is not tuple else 'list of numbers'}")  # fmt: skip
    if origin is float:
        return _number(value)
    if origin is tuple:
        return tuple(_number(x) for x in value)
    return value


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number or a number's text (not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


SECTIONS = ("model", "train", "search")
SECTION_CLASSES = {"model": ModelConfig, "train": TrainConfig}
"""The sections whose fields overrides and search spaces name."""


def preset_values(name: str) -> dict[str, dict[str, Any]]:
    """A preset's ``model``, ``train`` and ``search`` sections (``sevlm/presets/NAME.yaml``)."""
    path = resources.files("sevlm") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no preset {name!r}; presets: {', '.join(preset_names())}")
    values = yaml.safe_load(path.read_text())
    return {section: values.get(section) or {} for section in SECTIONS}


def load_configs(
    preset: str | None = "tiny",
    config_file: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Model and train configs: a preset, then a YAML file, then ``key=value`` overrides.

    The file has ``model:`` and ``train:`` sections and may name its own ``preset:``. An
    override key is ``model.FIELD``, ``train.FIELD`` or a bare field name of either.
    """
    values = _merged_sections(preset, config_file)
    return _build(values["model"], values["train"], overrides or {})


def override_configs(
    model: ModelConfig, train: TrainConfig, overrides: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The configs with ``key=value`` overrides applied (as in :func:`load_configs`)."""
    return _build(model.to_dict(), train.to_dict(), overrides)


def _build(
    model: dict[str, Any], train: dict[str, Any], overrides: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    values = {"model": dict(model), "train": dict(train)}
    for key, value in overrides.items():
        if key.count(".") > 1:
            raise ValueError(f"override {key!r}: nested fields (like model.vision) are set in "
                             "--config, as a whole mapping")  # fmt: skip
        section, field_name = field_of(key, f"override {key!r}")
        values[section][field_name] = value
    if not {"select_mode", "train.select_mode"} & overrides.keys() and (
        {"select_metric", "train.select_metric"} & overrides.keys()
    ):
        values["train"]["select_mode"] = None  # the new metric's own, not the old one's
    return _from_dict(ModelConfig, values["model"]), _from_dict(TrainConfig, values["train"])


def load_search_config(
    preset: str | None = "tiny", config_file: Path | str | None = None
) -> SearchConfig:
    """The ``search:`` section of a preset, then of a YAML file (its ``space`` replaces the
    preset's whole; other keys are merged)."""
    return _from_dict(SearchConfig, _merged_sections(preset, config_file)["search"])


def _merged_sections(preset: str | None, config_file: Path | str | None) -> dict[str, dict]:
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    file_values = _read_yaml(config_file) if config_file else {}
    unknown_sections = sorted(set(file_values) - {"preset", *SECTIONS})
    if unknown_sections:
        raise ValueError(f"{config_file}: unknown sections {', '.join(unknown_sections)}")
    preset = file_values.get("preset", preset)
    if preset:
        values = preset_values(preset)
    for section in SECTIONS:
        values[section] = {**values[section], **(file_values.get(section) or {})}
    return values


def _read_yaml(path: Path | str) -> dict[str, Any]:
    """A config file's sections, or a clear error: unreadable, not YAML, not sections."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ValueError(f"--config {path}: cannot be read ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(values, dict) or any(
        not isinstance(values.get(section), dict | None) for section in SECTIONS
    ):
        raise ValueError(f"--config {path}: a mapping of sections (model:, train:, search:), "
                         "each a mapping of fields")  # fmt: skip
    return values


def field_of(key: str, where: str) -> tuple[str, str]:
    """``(section, field)`` that ``key`` names: ``model.FIELD``, ``train.FIELD``, or a bare
    ``FIELD`` of one of the two. ``where`` starts the error message."""
    fields = {s: {f.name for f in dataclasses.fields(c)} for s, c in SECTION_CLASSES.items()}
    section, _, name = key.rpartition(".")
    if section and section not in fields:
        raise ValueError(f"{where}: name a model or train field (like train.lr)")
    owners = [section] if section else [s for s, names in fields.items() if name in names]
    if len(owners) > 1:
        raise ValueError(f"{where} names a field of both model and train: write model.{name} "
                         f"or train.{name}")  # fmt: skip
    if not owners or name not in fields[owners[0]]:
        scope = [section] if section else list(fields)
        known = sorted(set().union(*(fields[s] for s in scope)))
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"one of {', '.join(known)}"
        raise ValueError(f"{where}: no such field of {' or '.join(scope)}; {hint}")
    return owners[0], name


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
        out[key.strip()] = _scalar(value.strip())
    return out


def _scalar(text: str) -> Any:
    """int, then float (``3e-3`` is a number; YAML 1.1 reads it as a string), then YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)
