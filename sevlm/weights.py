"""Where a model's weights come from and go.

In: random initialisation, or pretrained GPT-2 (``distilgpt2``) and CLIP weights by hub name
or local folder. Out and back: a Hugging Face style model directory, ``config.json``,
``model.safetensors``, the tokenizer files, the lexicon and a model card. Loading never
unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from sevlm.config import GPT2_VOCAB, ModelConfig
from sevlm.lexicon import VADLexicon, read_lexicon
from sevlm.model import SEVLM, count_parameters
from sevlm.tokenizer import EMOTION_TOKEN, EXPLANATION_TOKEN, load_tokenizer, sha256_file

FORMAT = "sevlm-model/1"
LEXICON_FILE = "lexicon.tsv"
WEIGHTS_FILE = "model.safetensors"


class WeightsError(RuntimeError):
    """Weights that cannot be had: offline, wrong shapes, a damaged model directory."""


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> SEVLM:
    """A model for ``config``: random init, then the pretrained weights it names, if any."""
    if len(tokenizer) != config.vocab_size:
        raise WeightsError(f"tokenizer has {len(tokenizer)} tokens, config {config.vocab_size}")
    model = SEVLM(
        config,
        emotion_segment=tokenizer.convert_tokens_to_ids(EMOTION_TOKEN),
        explanation_segment=tokenizer.convert_tokens_to_ids(EXPLANATION_TOKEN),
        pad_id=tokenizer.pad_token_id,
    )
    if config.decoder_weights:
        state, n_head = _fetch(config, "decoder_weights", _gpt2_state)
        load_gpt2_weights(model, state, n_head)
    if config.vision_weights:
        clip = _fetch(config, "vision_weights", _clip_model)
        _check_vision(config, clip.config.to_dict())
        model.image_encoder.clip.load_state_dict(clip.state_dict())
    return model


def check_pretrained(config: ModelConfig) -> None:
    """Fail before hours of data checking when the pretrained weights ``config`` names cannot
    be had: each source's ``config.json`` is found (a local folder, the hub cache, or the hub;
    a few KB) without loading the weights."""
    for field in ("decoder_weights", "vision_weights"):
        if getattr(config, field):
            _fetch(config, field, _config_file)


def _config_file(ref: str) -> str:
    from transformers.utils import cached_file

    found = cached_file(ref, "config.json")
    if found is None:  # some versions answer None instead of raising
        raise OSError(f"{ref}: no config.json")
    return found


def _gpt2_state(ref: str) -> tuple[dict[str, torch.Tensor], int]:
    from transformers import GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel.from_pretrained(ref)
    return gpt2.transformer.state_dict(), gpt2.config.n_head


def _clip_model(ref: str):
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(ref)


def _fetch(config: ModelConfig, field: str, loader):
    ref = getattr(config, field)
    is_folder = ref.startswith(("/", ".", "~")) or Path(ref).exists()  # not a hub name
    if is_folder and not (Path(ref).expanduser() / "config.json").is_file():
        raise WeightsError(
            f"{field}={ref}: no {field.split('_')[0]} model there (a folder with its "
            "config.json and weights, as `hf download` or `save_pretrained` writes it)"
        )
    try:
        return loader(ref)
    except OSError as e:
        raise WeightsError(
            f"preset {config.name!r}: cannot load {field.split('_')[0]} weights {ref!r} "
            f"(no access to the model hub?). Fetch them once where the hub is reachable "
            f"(e.g. `hf download {ref} --local-dir /models/{ref.split('/')[-1]}`) and point "
            f"the config at the folder: {field}=/models/{ref.split('/')[-1]}"
        ) from e


def _check_vision(config: ModelConfig, found: dict[str, Any]) -> None:
    for key, value in config.vision.items():
        if key in found and found[key] != value:
            raise WeightsError(f"vision weights have {key}={found[key]}, config says {value}")


def load_gpt2_weights(
    model: SEVLM, state: dict[str, torch.Tensor], n_head: int | None = None
) -> None:
    """Copy a Hugging Face GPT-2 state dict (``GPT2Model`` keys) into the decoder.

    GPT-2's Conv1D weights are ``[in, out]`` and become ``nn.Linear``'s ``[out, in]``; its
    fused ``c_attn`` splits into query and key/value. The project's new tokens start at the
    mean embedding; the cross-attention layers have no pretrained weights and stay as
    initialised, as when transformers adds cross-attention to a GPT-2 checkpoint.
    """
    c, cfg = model.config.n_embd, model.config
    layers = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("h.")), default=-1)
    if n_head is not None and n_head != cfg.n_head:
        raise WeightsError(f"GPT-2 weights have {n_head} heads; {cfg.name!r} wants {cfg.n_head}")
    if state["wte.weight"].shape != (GPT2_VOCAB, c) or layers != cfg.n_layer:
        raise WeightsError(
            f"GPT-2 weights are {layers} layers x {state['wte.weight'].shape[1]} wide; "
            f"config {cfg.name!r} wants {cfg.n_layer} x {c}"
        )
    if state["wpe.weight"].shape[0] < cfg.n_positions:
        raise WeightsError(f"GPT-2 weights have {state['wpe.weight'].shape[0]} positions")
    with torch.no_grad():
        wte = state["wte.weight"]
        model.wte.weight[:GPT2_VOCAB] = wte
        model.wte.weight[GPT2_VOCAB:] = wte.mean(dim=0)
        model.wpe.weight.copy_(state["wpe.weight"][: cfg.n_positions])
        model.ln_f.load_state_dict({"weight": state["ln_f.weight"], "bias": state["ln_f.bias"]})
        for i, block in enumerate(model.blocks):
            p = f"h.{i}."
            for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                getattr(block, ours).weight.copy_(state[p + theirs + ".weight"])
                getattr(block, ours).bias.copy_(state[p + theirs + ".bias"])
            w, b = state[p + "attn.c_attn.weight"], state[p + "attn.c_attn.bias"]
            block.attn.q.weight.copy_(w[:, :c].T)
            block.attn.q.bias.copy_(b[:c])
            block.attn.kv.weight.copy_(w[:, c:].T)
            block.attn.kv.bias.copy_(b[c:])
            for linear, name in (
                (block.attn.proj, "attn.c_proj"),
                (block.mlp[0], "mlp.c_fc"),
                (block.mlp[2], "mlp.c_proj"),
            ):
                linear.weight.copy_(state[p + name + ".weight"].T)
                linear.bias.copy_(state[p + name + ".bias"])


# ---------------------------------------------------------------------------------------------
# The model directory


@dataclass
class LoadedModel:
    """A model with what it needs to read and write text."""

    model: SEVLM
    tokenizer: PreTrainedTokenizerBase
    lexicon: VADLexicon
    info: dict[str, Any]
    """config.json as saved: the model config, lexicon provenance, training and metrics."""


def save_pretrained(
    model: SEVLM,
    folder: Path | str,
    tokenizer: PreTrainedTokenizerBase,
    lexicon: VADLexicon,
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    data: dict[str, Any] | None = None,
    copy_lexicon: bool = True,
) -> Path:
    """Write a model directory. ``data`` says what it was trained on (source, split seed, text
    preparation). ``copy_lexicon=False`` stores only the lexicon's path and hash (NRC-VAD's
    licence may not let you pass the file on with the model)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS_FILE)
    tokenizer.save_pretrained(folder)
    lexicon_info = {"source": lexicon.source, "sha256": lexicon.sha256, "entries": len(lexicon)}
    if copy_lexicon and len(lexicon):
        write_lexicon_tsv(lexicon, folder / LEXICON_FILE)
        lexicon_info["file"] = LEXICON_FILE
        lexicon_info["file_sha256"] = sha256_file(folder / LEXICON_FILE)
    info = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "lexicon": lexicon_info,
        "training": training or {},
        "data": data or {},
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float)},
    }
    (folder / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(model, info))
    return folder


def load_pretrained(
    folder: Path | str, lexicon: Path | str | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a model directory (safetensors only; nothing is unpickled, nothing downloaded).

    ``lexicon`` overrides where the lexicon is read from (needed when it was not copied).
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{folder}: not a sevlm model directory ({e})") from e
    _check_info(folder, info)
    trained = ModelConfig.from_dict(info["model"])
    tokenizer = load_tokenizer(str(folder))
    model = build_model(trained.without_pretrained(), tokenizer)  # all in model.safetensors
    try:
        load_weights(model, folder / WEIGHTS_FILE, device)
    except (OSError, RuntimeError, SafetensorError) as e:  # missing, truncated, other shapes
        raise WeightsError(f"{folder / WEIGHTS_FILE}: cannot be loaded ({str(e)[:300]})") from e
    model.config = trained  # as trained: where its weights first came from
    return LoadedModel(
        model.to(device).eval(), tokenizer, _load_lexicon(folder, info, lexicon), info
    )


def _check_info(folder: Path, info: Any) -> None:
    """The shape of a model directory's config.json, before anything reads its parts."""
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise WeightsError(f"{folder}: unknown format {found!r}, want {FORMAT}")
    data = info.get("data", {})
    parts = [info.get("model"), info.get("lexicon", {}), data]
    if not all(isinstance(part, dict) for part in parts) or not (
        isinstance(data.get("seed", 0), int) and isinstance(data.get("text_prep", {}), dict)
    ):
        raise WeightsError(f"{folder}: config.json is damaged (model, lexicon, data and "
                           "data.text_prep must be mappings, data.seed an integer)")  # fmt: skip


def save_weights(model: SEVLM, path: Path) -> None:
    """A model's state as safetensors (checkpoints and model directories alike)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, path, metadata={"format": FORMAT})


def load_weights(model: SEVLM, path: Path, device: str | torch.device = "cpu") -> None:
    """Every weight of ``model`` from a safetensors file (strict; nothing unpickled)."""
    model.load_state_dict(load_file(path, device=str(device)), strict=True)


def _load_lexicon(folder: Path, info: dict, override: Path | str | None) -> VADLexicon:
    meta = info.get("lexicon", {})
    if override is not None:
        return read_lexicon(override)
    if "file" in meta:
        path = folder / str(meta["file"])
        if not path.resolve().is_relative_to(folder.resolve()) or not path.is_file():
            raise WeightsError(f"{folder}: its lexicon file {meta['file']!r} is not in the folder")
        if sha256_file(path) != meta.get("file_sha256"):
            raise WeightsError(f"{path} was changed after the model was saved (sha256 differs)")
        return read_lexicon(path)
    if not meta.get("source") or not meta.get("entries"):
        return VADLexicon({})
    lexicon = read_lexicon(meta["source"])
    if lexicon.sha256 != meta.get("sha256"):
        raise WeightsError(
            f"{folder}: the lexicon at {meta['source']} is not the one the model was trained "
            f"with (sha256 {lexicon.sha256}, expected {meta.get('sha256')})"
        )
    return lexicon


def write_lexicon_tsv(lexicon: VADLexicon, path: Path) -> None:
    """The lexicon in NRC-VAD v2 layout (values in [-1, 1]), readable by read_lexicon."""
    lines = ["term\tvalence\tarousal\tdominance"]
    lines += [f"{w}\t{v:.6g}\t{a:.6g}\t{d:.6g}" for w, (v, a, d) in sorted(lexicon.table.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def model_card(model: SEVLM, info: dict[str, Any]) -> str:
    cfg, lex = model.config, info["lexicon"]
    n_all, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
    lines = [
        f"# SEVLM ({cfg.name})",
        "",
        "A small emotional vision-language model: given a painting, it names the emotion it "
        "evokes (one of ArtEmis's nine) and explains why. Trained with sevlm "
        "(SEVLM, arXiv 2403.11150).",
        "",
        "## Architecture",
        "",
        f"- decoder: GPT-2, {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, "
        "cross-attention to the image in every block "
        f"(from `{cfg.decoder_weights or 'random init'}`)",
        f"- image encoder: CLIP vision tower, {cfg.vision.get('num_hidden_layers')} layers, "
        f"{cfg.image_size} px, {'frozen' if cfg.freeze_vision else 'trained'} "
        f"(from `{cfg.vision_weights or 'random init'}`)",
        f"- VAD embeddings: {'on' if cfg.use_vad_embeddings else 'off'}; "
        f"w_vad {cfg.w_vad}, w_cl {cfg.w_cl}, temperature {cfg.temperature}",
        f"- parameters: {n_all:,} ({n_train:,} trainable)",
        f"- lexicon: {lex.get('entries')} entries, sha256 {lex.get('sha256')}",
        "",
    ]
    if info.get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in sorted(info["metrics"].items())]
        lines.append("")
    if info.get("training"):
        lines += [
            "## Training config",
            "",
            "```json",
            json.dumps(info["training"], indent=2),
            "```",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```python",
        "from sevlm.weights import load_pretrained",
        "",
        'loaded = load_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)
