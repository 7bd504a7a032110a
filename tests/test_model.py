"""The model: heads and losses, causality, the fusion's start, ablations, generation, weights."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sevlm.config import ModelConfig, parse_overrides
from sevlm.generate import Decoder
from sevlm.lexicon import VADLexicon
from sevlm.losses import contrastive_loss, scores_to_loss
from sevlm.model import ContrastiveScorer, count_parameters
from sevlm.sequences import SequenceBuilder
from sevlm.tokenizer import load_tokenizer
from sevlm.weights import WeightsError, build_model, load_gpt2_weights

LEXICON = VADLexicon(
    {"gloomy": (-0.8, -0.3, -0.4), "calm": (0.6, -0.6, 0.2), "furious": (-0.9, 0.9, 0.4)}
)
TEXTS = [
    ("sadness", "the gloomy grey rain falls"),
    ("contentment", "the calm green fields"),
    ("anger", "the furious red strokes"),
    ("awe", "a tall mountain under stars"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def tiny(**overrides) -> ModelConfig:
    return ModelConfig.preset("tiny", **overrides)


def paper_random() -> ModelConfig:
    """The paper's architecture, built from configs with random weights (offline)."""
    return ModelConfig.preset("paper", decoder_weights=None, vision_weights=None)


def make_batch(tokenizer, config: ModelConfig, n_images: int = 2, seed: int = 0) -> dict:
    """A paired batch: image i has sequences (TEXTS[i], TEXTS[i + 1])."""
    g = torch.Generator().manual_seed(seed)
    builder = SequenceBuilder(tokenizer, LEXICON, config.max_len)
    pairs = [
        [builder.encode(*TEXTS[i % 4]), builder.encode(*TEXTS[(i + 1) % 4])]
        for i in range(n_images)
    ]
    stack = lambda name: torch.stack(  # noqa: E731
        [torch.stack([torch.as_tensor(getattr(s, name)) for s in pair]) for pair in pairs]
    )
    size = config.image_size
    return {
        "pixel_values": torch.randn(n_images, 3, size, size, generator=g),
        "input_ids": stack("input_ids"),
        "labels": stack("labels"),
        "segment_ids": stack("segment_ids"),
        "vad": stack("vad"),
        "vad_mask": stack("vad_mask"),
        "has_pair": torch.ones(n_images, dtype=torch.bool),
    }


@pytest.mark.parametrize("make_config", [tiny, paper_random], ids=["tiny", "paper"])
def test_losses_finite_and_gradients_reach_every_group(tokenizer, make_config) -> None:
    torch.manual_seed(0)
    config = make_config()
    model = build_model(config, tokenizer)
    batch = make_batch(tokenizer, config)
    out = model(batch)
    for term in (out.loss, out.lm_loss, out.vad_loss, out.cl_loss):
        assert term.ndim == 0 and torch.isfinite(term)
    expected = out.lm_loss + config.w_vad * out.vad_loss + config.w_cl * out.cl_loss
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())
    zero = {n for n, p in trainable.items() if not p.grad.abs().sum() > 0}
    # The fusion starts as [I | 0]: the VAD encoder's output meets zero weights, so at step 0
    # its gradient is exactly zero; the fusion's VAD columns do get one.
    assert zero == {n for n in trainable if n.startswith("vad_encoder.")}
    assert model.fuse.weight.grad[:, -3:].abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model(batch).loss.backward()
    zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
    assert not zero, zero  # after one update, every trainable parameter learns
    for group in ("wte", "blocks.0.cross", "vad_encoder", "fuse", "vad_head", "cl_head"):
        assert any(n.startswith(group) for n in trainable), group
    clip = list(model.image_encoder.clip.parameters())
    if config.freeze_vision:
        assert all(not p.requires_grad and p.grad is None for p in clip)
    else:
        assert all(p.grad is not None for p in clip)


def test_paper_architecture_dimensions(tokenizer) -> None:
    model = build_model(paper_random(), tokenizer)
    memory = model.encode_images(torch.randn(1, 3, 224, 224))
    assert memory.shape == (1, 196, 768)  # ViT-B/16 patch tokens, same width as distilgpt2
    assert len(model.blocks) == 6 and model.wte.weight.shape == (50260, 768)


def test_causal_decoder_and_vad_encoder(tokenizer) -> None:
    torch.manual_seed(0)
    config = tiny(dropout=0.0)
    model = build_model(config, tokenizer).eval()
    batch = make_batch(tokenizer, config, n_images=1)
    ids, segs = batch["input_ids"][:, 0], batch["segment_ids"][:, 0]
    vad = batch["vad"][:, 0]
    memory = model.encode_images(batch["pixel_values"])
    t = 8
    changed_ids, changed_vad = ids.clone(), vad.clone()
    changed_ids[:, t + 1 :] = 1234
    changed_vad[:, t + 1 :] = 0.7
    with torch.no_grad():
        h1, _ = model.decode(ids, segs, vad, memory)
        h2, _ = model.decode(changed_ids, segs, changed_vad, memory)
        v1, _ = model.vad_encoder(vad)
        v2, _ = model.vad_encoder(changed_vad)
    torch.testing.assert_close(h1[:, : t + 1], h2[:, : t + 1])
    torch.testing.assert_close(v1[:, : t + 1], v2[:, : t + 1])
    assert not torch.allclose(h1[:, t + 1 :], h2[:, t + 1 :])
    assert not torch.allclose(v1[:, t + 1 :], v2[:, t + 1 :])


def test_contrastive_loss_by_hand() -> None:
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([0, 1])
    valid = torch.tensor([True, True, True])
    for t in (1.0, 0.1):
        row0 = -(2.0 / t) + math.log(sum(math.exp(s / t) for s in (2.0, 0.5, -1.0)))
        row1 = -(1.0 / t) + math.log(sum(math.exp(s / t) for s in (0.0, 1.0, 3.0)))
        loss = scores_to_loss(scores, targets, valid, temperature=t)
        assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # an invalid candidate is removed from every row
    masked = scores_to_loss(scores, targets, torch.tensor([True, True, False]), temperature=1.0)
    row0 = -2.0 + math.log(math.exp(2.0) + math.exp(0.5))
    row1 = -1.0 + math.log(math.exp(0.0) + math.exp(1.0))
    assert masked.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_contrastive_candidates_are_the_global_batch_minus_unpaired() -> None:
    class DotScorer(torch.nn.Module):  # score = <emotion, explanation>: easy to reason about
        def forward(self, image, emotion, explanations):
            return emotion @ explanations.T

    emotion = torch.eye(4)
    explanation = torch.eye(4) * 5
    valid = torch.tensor([True, True, False, False])  # image 1 (sequences 2, 3) is unpaired
    loss = contrastive_loss(DotScorer(), torch.zeros(4, 4), emotion, explanation, valid, 1.0)
    expected = -5.0 + math.log(math.exp(5.0) + 1.0)  # own explanation vs the partner's
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_evaluation_candidates_are_the_image_s_own_two() -> None:
    class DotScorer(torch.nn.Module):
        def forward(self, image, emotion, explanations):
            return emotion @ explanations.T

    emotion, explanation = torch.eye(4), torch.eye(4) * 5
    valid = torch.ones(4, dtype=torch.bool)
    local = contrastive_loss(DotScorer(), torch.zeros(4, 4), emotion, explanation, valid, 1.0, 2)
    assert local.item() == pytest.approx(-5.0 + math.log(math.exp(5.0) + 1.0), rel=1e-5)
    batch = contrastive_loss(DotScorer(), torch.zeros(4, 4), emotion, explanation, valid, 1.0)
    assert batch.item() == pytest.approx(-5.0 + math.log(math.exp(5.0) + 3.0), rel=1e-5)


def test_scorer_matches_mlp_over_concatenation() -> None:
    torch.manual_seed(0)
    scorer = ContrastiveScorer(8)
    image, emotion, candidates = torch.randn(3, 8), torch.randn(3, 8), torch.randn(5, 8)
    scores = scorer(image, emotion, candidates)
    for a in range(3):
        for k in range(5):
            x = torch.cat([image[a], emotion[a], candidates[k]])
            assert scores[a, k].item() == pytest.approx(
                scorer.rest(scorer.first(x)).item(), rel=1e-4, abs=1e-5
            )


def test_the_encoder_scales_and_normalizes_uint8_pixels(tokenizer) -> None:
    config = tiny(image_mean=(0.2, 0.4, 0.6), image_std=(0.5, 0.25, 0.125))
    encoder = build_model(config, tokenizer).eval().image_encoder
    size = config.image_size
    pixels = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    mean = torch.tensor(config.image_mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float64).view(1, 3, 1, 1)
    by_hand = ((pixels.double() / 255 - mean) / std).float()
    torch.testing.assert_close(encoder.normalize(pixels), by_hand)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), encoder(by_hand))
    assert encoder.normalize(by_hand) is by_hand  # float pixels: normalized already
    assert not [k for k in encoder.state_dict() if k.startswith("pixel_")]  # not weights


def test_fusion_is_identity_at_init(tokenizer) -> None:
    model = build_model(tiny(), tokenizer)
    tok = torch.randn(2, 5, 128)
    vad = torch.randn(2, 5, 3)
    torch.testing.assert_close(model.fuse(torch.cat([tok, vad], dim=-1)), tok)


def test_ablations_remove_parameters_and_compute(tokenizer) -> None:
    full = build_model(tiny(), tokenizer)
    no_vad_emb = build_model(tiny(use_vad_embeddings=False), tokenizer)
    no_vad_head = build_model(tiny(w_vad=0.0), tokenizer)
    no_cl = build_model(tiny(w_cl=0.0), tokenizer)
    n = count_parameters(full)
    assert (
        n - count_parameters(no_vad_emb)
        == count_parameters(full.vad_encoder) + (128 + 3) * 128 + 128
    )
    assert n - count_parameters(no_vad_head) == 128 * 3 + 3
    assert n - count_parameters(no_cl) == count_parameters(full.cl_head)
    assert no_vad_emb.vad_encoder is None and no_vad_emb.fuse is None
    batch = make_batch(tokenizer, tiny())
    calls = {"vad_head": 0, "cl_head": 0}
    for name in calls:
        module = getattr(full, name)
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    full(batch)
    assert calls == {"vad_head": 1, "cl_head": 1}
    out = no_cl(batch)
    assert out.cl_loss is None and no_cl.cl_head is None
    out = no_vad_head(batch)
    assert out.vad_loss is None
    assert torch.isfinite(no_vad_emb(batch).loss)


def test_cached_and_uncached_generation_give_identical_tokens(tokenizer) -> None:
    torch.manual_seed(1)
    model = build_model(tiny(), tokenizer).eval()
    decoder = Decoder(model, tokenizer, LEXICON)
    memory = model.encode_images(torch.randn(6, 3, 64, 64))
    cached = decoder.generate(memory, use_cache=True)
    uncached = decoder.generate(memory, use_cache=False)
    assert cached == uncached
    assert all(len(row) == 25 for row in cached)  # an untrained model never stops early


def test_parse_generated_text(tokenizer) -> None:
    decoder = Decoder(build_model(tiny(), tokenizer), tokenizer, LEXICON)
    e = decoder.parse(" something else because the calm, gloomy sea")
    assert e.emotion == "something else" and e.explanation == "the calm, gloomy sea"
    assert e.vad == pytest.approx((-0.1, -0.45, -0.1))
    assert decoder.parse(" blah because x").emotion == "unknown"
    assert decoder.parse(" awesome because x").emotion == "unknown"  # whole words only
    assert decoder.parse(" fear and anger because x").emotion == "fear"  # the first named
    assert decoder.parse(" awe").explanation == "" and decoder.parse(" awe").vad is None


def test_config_validation_and_overrides() -> None:
    with pytest.raises(ValueError, match="temperature"):
        tiny(temperature=0)
    with pytest.raises(ValueError, match="divisible"):
        tiny(n_head=3)
    with pytest.raises(ValueError, match="image_std must be > 0"):
        tiny(image_std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="unknown ModelConfig keys: nope"):
        ModelConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="no preset 'huge'"):
        ModelConfig.preset("huge")
    assert parse_overrides(["w_cl=0.5", "use_vad_embeddings=false", "name=x", "lr=3e-3"]) == {
        "w_cl": 0.5, "use_vad_embeddings": False, "name": "x", "lr": 0.003,
    }  # fmt: skip


def test_load_configs_layers_preset_file_and_overrides(tmp_path) -> None:
    from sevlm.config import load_configs

    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nmodel:\n  w_cl: 0.25\ntrain:\n  lr: 0.01\n  max_steps: 7\n")
    model, train = load_configs("paper", path, {"train.max_steps": 9, "temperature": 0.5})
    assert model.name == "tiny" and model.w_cl == 0.25 and model.temperature == 0.5
    assert train.lr == 0.01 and train.max_steps == 9 and train.batch_size == 16
    with pytest.raises(ValueError, match="override 'nope': no such field of model or train"):
        load_configs("tiny", None, {"nope": 1})
    with pytest.raises(ValueError, match=r"'lr_decoder': no such field of model or train; one of"):
        load_configs("tiny", None, {"lr_decoder": 1})
    with pytest.raises(ValueError, match=r"'modle\.w_cl': name a model or train field"):
        load_configs("tiny", None, {"modle.w_cl": 1})
    path.write_text("modle:\n  w_cl: 1\n")
    with pytest.raises(ValueError, match="unknown sections modle"):
        load_configs("tiny", path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  max_steps: ten\n", "train.max_steps: 'ten' is not an int"),
        ("train:\n  lr: fast\n", "train.lr: 'fast' is not a float"),
        (
            "model:\n  freeze_vision: yes please\n",
            "model.freeze_vision: 'yes please' is not a bool",
        ),
        ("model:\n  image_mean: grey\n", "model.image_mean: 'grey' is not a list of numbers"),
        ("model:\n  vision: 5\n", "model.vision: 5 is not a dict"),
        ("model: 5\n", "a mapping of sections"),
        ("- model\n", "a mapping of sections"),
        ("model: [\n", "not valid YAML"),
    ],
)
def test_config_files_with_wrong_values_are_clear_errors(tmp_path, text, message) -> None:
    """Errors that name the field, not a TypeError from deep inside (a word where a number
    goes, a section that is not a mapping)."""
    from sevlm.config import load_configs

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_configs("tiny", path)


def test_config_values_are_taken_as_their_fields_type(tmp_path) -> None:
    from sevlm.config import load_configs

    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-5\n")  # YAML 1.1 reads this as text
    model, train = load_configs("tiny", path, {"w_cl": 1, "image_mean": [0, 0.5, 1]})
    assert train.lr == 1e-5 and model.w_cl == 1.0 and isinstance(model.w_cl, float)
    assert model.image_mean == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="cannot be read"):
        load_configs("tiny", tmp_path / "missing.yaml")


def test_gpt2_weights_map_onto_the_decoder(tokenizer) -> None:
    """With cross-attention silenced, our decoder computes exactly what HF's GPT-2 does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = tiny(dropout=0.0, use_vad_embeddings=False)
    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=64, vocab_size=50257)
    ).eval()
    model = build_model(config, tokenizer).eval()
    load_gpt2_weights(model, hf.transformer.state_dict())
    for block in model.blocks:
        torch.nn.init.zeros_(block.cross.proj.weight)
        torch.nn.init.zeros_(block.cross.proj.bias)
    ids = torch.tensor([[50256, 262, 9942, 318, 25303, 780, 262, 46400]])
    segs = torch.full_like(ids, 50257)  # a segment id whose embedding we zero below
    with torch.no_grad():
        model.wte.weight[50257] = 0
        ours = model.logits(model.decode(ids, segs, None, torch.zeros(1, 4, 128))[0])
        theirs = hf(ids).logits
    torch.testing.assert_close(ours[..., :50257], theirs, atol=1e-4, rtol=1e-4)


def test_offline_preset_is_a_clear_error(tokenizer) -> None:
    config = ModelConfig.preset("paper", vision_weights=None)
    with pytest.raises(WeightsError, match=r"preset 'paper'.*distilgpt2.*decoder_weights="):
        build_model(config, tokenizer)


def test_pretrained_sources_are_checked_without_loading_them(tmp_path, monkeypatch) -> None:
    from transformers import GPT2Config

    from sevlm.weights import check_pretrained

    check_pretrained(tiny())  # random init: nothing to find
    with pytest.raises(WeightsError, match=r"decoder_weights=.*: no decoder model there"):
        check_pretrained(tiny(decoder_weights=str(tmp_path)))  # a folder without a model
    with pytest.raises(WeightsError, match="no vision model there"):
        check_pretrained(tiny(vision_weights=str(tmp_path / "missing")))
    GPT2Config(n_layer=1).save_pretrained(tmp_path)
    check_pretrained(tiny(decoder_weights=str(tmp_path)))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # as with no hub
    with pytest.raises(WeightsError, match=r"cannot load decoder weights 'distilgpt2'"):
        check_pretrained(ModelConfig.preset("paper"))


def test_lm_loss_is_the_mean_over_every_target_position(tokenizer) -> None:
    """The LM head runs only where a label is: the loss is the one over every position."""
    torch.manual_seed(0)
    model = build_model(tiny(), tokenizer).eval()
    batch = make_batch(tokenizer, model.config, n_images=3)
    flat = {k: batch[k].flatten(0, 1) for k in ("input_ids", "segment_ids", "vad", "labels")}
    targets = flat["labels"][:, 1:]
    assert (targets == -100).any() and (targets != -100).any()  # padding to leave out
    with torch.no_grad():
        out = model(batch)
        memory = model.encode_images(batch["pixel_values"]).repeat_interleave(2, dim=0)
        hidden, _ = model.decode(flat["input_ids"], flat["segment_ids"], flat["vad"], memory)
        every = model.logits(hidden)[:, :-1].flatten(0, 1)
    expected = torch.nn.functional.cross_entropy(every, targets.flatten(), ignore_index=-100)
    assert out.lm_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.counts["lm_loss"] == int((targets != -100).sum())


def test_save_then_load_in_a_fresh_process_gives_identical_losses(tokenizer, tmp_path) -> None:
    from sevlm.weights import load_pretrained, save_pretrained

    torch.manual_seed(0)
    config = tiny()
    model = build_model(config, tokenizer).eval()
    batch = make_batch(tokenizer, config)
    with torch.no_grad():
        out = model(batch)
    expected = torch.stack([out.loss, out.lm_loss, out.vad_loss, out.cl_loss])
    folder = save_pretrained(
        model, tmp_path / "model", tokenizer, LEXICON, metrics={"bleu4": 0.1}, training={"lr": 1}
    )
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "lexicon.tsv"} <= names
    assert "bleu4" in (folder / "README.md").read_text()
    torch.save(batch, tmp_path / "batch.pt")
    script = f"""
import torch
from sevlm.weights import load_pretrained
loaded = load_pretrained({str(folder)!r})
batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
with torch.no_grad():
    out = loaded.model(batch)
    torch.save(torch.stack([out.loss, out.lm_loss, out.vad_loss, out.cl_loss]),
               {str(tmp_path / "losses.pt")!r})
assert loaded.lexicon.table == {LEXICON.table!r}
"""
    subprocess.run(
        [sys.executable, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    got = torch.load(tmp_path / "losses.pt", weights_only=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    loaded = load_pretrained(folder)
    assert loaded.info["metrics"] == {"bleu4": 0.1}


def test_lexicon_not_copied_is_checked_by_hash(tokenizer, tmp_path) -> None:
    from sevlm.lexicon import read_lexicon
    from sevlm.weights import load_pretrained, save_pretrained

    path = tmp_path / "lex.txt"
    path.write_text("calm\t0.8\t0.2\t0.6\n")
    model = build_model(tiny(), tokenizer)
    folder = save_pretrained(
        model, tmp_path / "m", tokenizer, read_lexicon(path), copy_lexicon=False
    )
    assert not (folder / "lexicon.tsv").exists()
    assert load_pretrained(folder).lexicon.get("calm") is not None
    path.write_text("calm\t0.1\t0.2\t0.6\n")
    with pytest.raises(WeightsError, match="not the one the model was trained with"):
        load_pretrained(folder)
    assert load_pretrained(folder, lexicon=path).lexicon.get("calm")[0] == pytest.approx(-0.8)


def test_not_a_model_directory(tmp_path: Path) -> None:
    from sevlm.weights import load_pretrained

    with pytest.raises(WeightsError, match="not a sevlm model directory"):
        load_pretrained(tmp_path)


def test_explain_keeps_the_training_mode(tokenizer) -> None:
    model = build_model(tiny(), tokenizer).train()
    Decoder(model, tokenizer, LEXICON).explain(torch.randn(1, 3, 64, 64), max_new_tokens=2)
    assert model.training


def test_a_bf16_model_runs(tokenizer) -> None:
    model = build_model(tiny(), tokenizer).to(torch.bfloat16)
    batch = make_batch(tokenizer, tiny())
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    assert torch.isfinite(model(batch).loss)
    said = Decoder(model, tokenizer, LEXICON).explain(batch["pixel_values"], max_new_tokens=3)
    assert len(said) == 2


def test_model_directory_edge_cases(tokenizer, tmp_path) -> None:
    from sevlm.weights import load_pretrained, save_pretrained

    config = ModelConfig.preset("tiny", vision_weights=None)
    model = build_model(config, tokenizer)
    model.config = ModelConfig.preset("tiny", decoder_weights="/models/gpt2-tiny")  # provenance
    empty = save_pretrained(model, tmp_path / "empty", tokenizer, VADLexicon({}),
                            metrics={"bleu4": 0.5, "note": "text"})  # fmt: skip
    loaded = load_pretrained(empty)
    assert len(loaded.lexicon) == 0 and loaded.info["metrics"] == {"bleu4": 0.5}
    assert loaded.model.config.decoder_weights == "/models/gpt2-tiny"
    full = save_pretrained(model, tmp_path / "full", tokenizer, LEXICON)
    with open(full / "lexicon.tsv", "a") as f:
        f.write("joy\t0.9\t0.5\t0.5\n")
    with pytest.raises(WeightsError, match="changed after the model was saved"):
        load_pretrained(full)


def test_a_damaged_model_directory_is_a_clear_error(tokenizer, tmp_path) -> None:
    """Every kind of damage a copied or hand-edited folder shows: a WeightsError that names
    the folder, never a KeyError or a read outside it."""
    from sevlm.weights import load_pretrained, save_pretrained

    model = build_model(ModelConfig.preset("tiny", vision_weights=None), tokenizer)
    good = save_pretrained(model, tmp_path / "good", tokenizer, LEXICON)
    info = json.loads((good / "config.json").read_text())
    outside = tmp_path / "lexicon.tsv"
    shutil.copy(good / "lexicon.tsv", outside)

    def damaged(name: str, config=None, weights: bytes | None = None) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config))
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        return folder

    truncated = (good / "model.safetensors").read_bytes()[:100]
    lexicon = {**info["lexicon"], "file": "../lexicon.tsv"}
    for folder, message in [
        (damaged("list", []), "unknown format 'list'"),
        (damaged("no-model", {k: v for k, v in info.items() if k != "model"}), "is damaged"),
        (damaged("seed", {**info, "data": {"seed": "zero"}}), "is damaged"),
        (damaged("truncated", weights=truncated), "model.safetensors: cannot be loaded"),
        (damaged("escape", {**info, "lexicon": lexicon}), "'../lexicon.tsv' is not in the folder"),
    ]:
        with pytest.raises(WeightsError, match=re.escape(message)):
            load_pretrained(folder)
    (folder := damaged("missing")).joinpath("model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model\.safetensors: cannot be loaded"):
        load_pretrained(folder)
