"""SEVLM: a GPT-2 decoder that reads a painting through cross-attention, names an emotion and
explains it, with VAD-fused embeddings, a VAD head and a ternary contrastive head.

Top to bottom: attention (with a KV cache), the GPT-2 block with cross-attention, the causal
VAD encoder, the image encoder, and the model with its three losses. Where this departs from
the released code (causal VAD encoder, fusion over exactly the explanation segment, identity
initialised fusion, masked pooling, global-batch negatives, a temperature), the README's
"Differences from the released code" says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from sevlm.config import ModelConfig
from sevlm.losses import contrastive_loss, masked_mean
from sevlm.sequences import IGNORE_INDEX

KV = tuple[Tensor, Tensor]


class Attention(nn.Module):
    """Multi-head attention. Self-attention is causal and extends a KV cache; cross-attention
    caches the keys and values of its fixed memory (the image tokens).

    A self-attention cache can also be preallocated (buffers ``[N, H, L, D]`` for L positions)
    and written in place: ``at`` is then the position of ``x``'s one token, whose keys and
    values go there, and the query sees the positions up to it. Every such step has the same
    shapes, so a CUDA graph can replay it (:mod:`sevlm.generate`)."""

    def __init__(self, dim: int, n_head: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.n_head, self.cross, self.dropout = n_head, cross, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        cache: KV | None = None,
        at: Tensor | None = None,
    ) -> tuple[Tensor, KV]:
        q = self._heads(self.q(x))
        if self.cross and cache is not None:
            k, v = cache  # the memory is fixed: its keys and values were computed once
        else:
            k, v = (self._heads(t) for t in self.kv(memory if self.cross else x).chunk(2, dim=-1))
            if at is not None and cache is not None:
                cache[0].index_copy_(2, at, k)
                cache[1].index_copy_(2, at, v)
                k, v = cache
            elif cache is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        mask = None
        if at is not None and not self.cross:
            mask = (torch.arange(k.shape[2], device=x.device) <= at)[None]  # those written
        elif not self.cross and q.shape[2] > 1:
            t, s = q.shape[2], k.shape[2]
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(x.shape)
        return self.resid_drop(self.proj(y)), (k, v)


class DecoderBlock(nn.Module):
    """GPT-2's pre-norm block with cross-attention between self-attention and the MLP."""

    def __init__(self, dim: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, n_head, dropout)
        self.ln_cross = nn.LayerNorm(dim, eps=1e-5)
        self.cross = Attention(dim, n_head, dropout, cross=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        cache: tuple[KV, KV] | None = None,
        at: Tensor | None = None,
    ) -> tuple[Tensor, tuple[KV, KV]]:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        a, self_cache = self.attn(self.ln_1(x), cache=self_cache, at=at)
        x = x + a
        c, cross_cache = self.cross(self.ln_cross(x), memory=memory, cache=cross_cache)
        x = x + c
        return x + self.mlp(self.ln_2(x)), (self_cache, cross_cache)


class VADLayer(nn.Module):
    """A post-norm transformer layer over the 3-wide VAD sequence (as released, but causal)."""

    def __init__(self, n_head: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(3, n_head, dropout)
        self.norm1 = nn.LayerNorm(3)
        self.ffn = nn.Sequential(
            nn.Linear(3, ffn), nn.ReLU(), nn.Linear(ffn, 3), nn.Dropout(dropout)
        )
        self.norm2 = nn.LayerNorm(3)

    def forward(
        self, x: Tensor, cache: KV | None = None, at: Tensor | None = None
    ) -> tuple[Tensor, KV]:
        a, cache = self.attn(x, cache=cache, at=at)
        x = self.norm1(x + a)
        return self.norm2(x + self.ffn(x)), cache


class VADEncoder(nn.Module):
    """Causal encoder of the per-token lexicon VAD: position t sees VAD at positions <= t only,
    so generation extends it token by token with its own cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pos = nn.Embedding(config.n_positions, 3)
        self.norm = nn.LayerNorm(3)
        self.layers = nn.ModuleList(
            VADLayer(config.vad_heads, config.vad_ffn, config.dropout)
            for _ in range(config.vad_layers)
        )

    def forward(
        self, vad: Tensor, start: int | Tensor = 0, cache: list[KV] | None = None
    ) -> tuple[Tensor, list[KV]]:
        """A tensor ``start`` is a preallocated cache's position (see :class:`Attention`)."""
        at = start if isinstance(start, Tensor) else None
        x = self.norm(vad + self.pos(start + torch.arange(vad.shape[1], device=vad.device)))
        caches = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, cache=None if cache is None else cache[i], at=at)
            caches.append(c)
        return x, caches


class ImageEncoder(nn.Module):
    """A CLIP vision tower: its patch tokens, after the final layer norm, are the memory."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.clip = CLIPVisionModel(CLIPVisionConfig(**config.vision))
        width = config.vision["hidden_size"]
        self.proj = nn.Identity() if width == config.n_embd else nn.Linear(width, config.n_embd)
        stats = {"pixel_mean": config.image_mean, "pixel_std": config.image_std}
        for name, values in stats.items():  # not weights: left out of checkpoints
            self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1), persistent=False)
        self.frozen = config.freeze_vision
        if self.frozen:
            self.clip.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.frozen:
            self.clip.eval()  # a frozen encoder never runs dropout or updates statistics
        return self

    def normalize(self, pixel_values: Tensor) -> Tensor:
        """uint8 pixels (:class:`sevlm.images.ImageTransform`) scaled to [0, 1] and normalized
        with the encoder's statistics; float pixels are taken as normalized already."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        scaled = pixel_values.to(self.pixel_mean.dtype) / 255
        return (scaled - self.pixel_mean) / self.pixel_std

    def forward(self, pixel_values: Tensor) -> Tensor:
        pixel_values = self.normalize(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.clip(pixel_values=pixel_values).last_hidden_state[:, 1:]
            tokens = self.clip.post_layernorm(hidden)
        return self.proj(tokens)


@dataclass
class DecoderState:
    """What generation carries from step to step: the KV caches and the next position.

    With ``position`` a tensor (``[1]``, on the model's device), the self-attention caches
    are preallocated buffers that each one-token step writes in place (see
    :class:`Attention`): :func:`preallocated` makes them."""

    blocks: list[tuple[KV, KV]]
    vad: list[KV] | None
    position: int | Tensor


def preallocated(state: DecoderState, length: int) -> DecoderState:
    """Buffers of their own for ``state``'s caches, the self-attention ones with room for
    ``length`` positions, and a tensor position, loaded with ``state`` (:func:`load_state`):
    the state of fixed-shape one-token steps."""

    def empty(kv: KV, positions: int | None = None) -> KV:
        n, h, t, d = kv[0].shape
        return kv[0].new_zeros(n, h, positions or t, d), kv[1].new_zeros(n, h, positions or t, d)

    blocks = [(empty(own, length), empty(cross)) for own, cross in state.blocks]
    vad = None if state.vad is None else [empty(kv, length) for kv in state.vad]
    position = torch.zeros(1, dtype=torch.long, device=state.blocks[0][0][0].device)
    fixed = DecoderState(blocks, vad, position)
    load_state(fixed, state)
    return fixed


def load_state(fixed: DecoderState, state: DecoderState) -> None:
    """Copy ``state`` (caches as long as what was read) into ``fixed``'s buffers, in place."""
    blocks = zip(fixed.blocks, state.blocks, strict=True)
    pairs = [pair for f, s in blocks for pair in zip(f, s, strict=True)]
    if state.vad is not None:
        pairs += list(zip(fixed.vad, state.vad, strict=True))
    for (fk, fv), (k, v) in pairs:
        fk[:, :, : k.shape[2]].copy_(k)
        fv[:, :, : v.shape[2]].copy_(v)
    fixed.position.fill_(state.position)


@dataclass
class SEVLMOutput:
    """The total loss, each term apart (for logging), and what each term averaged over (so
    evaluation can add batches up exactly)."""

    loss: Tensor
    lm_loss: Tensor
    vad_loss: Tensor | None
    cl_loss: Tensor | None
    counts: dict[str, int]
    """Predicted tokens (lm_loss), known VAD targets (vad_loss), anchors (cl_loss)."""


class SEVLM(nn.Module):
    """The model. ``forward`` trains on paired batches; ``decode`` runs (and caches) steps."""

    def __init__(
        self, config: ModelConfig, emotion_segment: int, explanation_segment: int, pad_id: int
    ):
        super().__init__()
        self.config = config
        self.emotion_segment, self.explanation_segment = emotion_segment, explanation_segment
        self.pad_id = pad_id
        c = config.n_embd
        self.image_encoder = ImageEncoder(config)
        self.wte = nn.Embedding(config.vocab_size, c)
        self.wpe = nn.Embedding(config.n_positions, c)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(c, config.n_head, config.dropout) for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(c, eps=1e-5)
        self.vad_encoder = VADEncoder(config) if config.use_vad_embeddings else None
        self.fuse = nn.Linear(c + 3, c) if config.use_vad_embeddings else None
        self.vad_head = nn.Linear(c, 3) if config.w_vad > 0 else None
        self.cl_head = ContrastiveScorer(c) if config.w_cl > 0 else None
        for name, module in self.named_modules():
            if not name.startswith("image_encoder.clip"):  # CLIP initialises itself
                _init_gpt2(module)
        if self.fuse is not None:
            init_identity_fusion(self.fuse, c)

    # -- the decoder ---------------------------------------------------------------------------

    def embed(
        self, input_ids: Tensor, segment_ids: Tensor, vad: Tensor, start: int | Tensor, vad_cache
    ) -> tuple[Tensor, list[KV] | None]:
        """Token (+ fused VAD on the explanation) + position + segment embeddings."""
        tok = self.wte(input_ids)
        if self.vad_encoder is not None:
            vad = vad.to(self.vad_encoder.pos.weight.dtype)
            encoded, vad_cache = self.vad_encoder(vad, start, vad_cache)
            fused = self.fuse(torch.cat([tok, encoded.to(tok.dtype)], dim=-1))
            explanation = (segment_ids == self.explanation_segment).unsqueeze(-1)
            tok = torch.where(explanation, fused, tok)
        positions = start + torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.drop(tok + self.wpe(positions) + self.wte(segment_ids)), vad_cache

    def decode(
        self,
        input_ids: Tensor,
        segment_ids: Tensor,
        vad: Tensor,
        memory: Tensor,
        state: DecoderState | None = None,
    ) -> tuple[Tensor, DecoderState]:
        """Final hidden states ``[N, T, C]`` for new tokens, continuing ``state`` if given."""
        start = 0 if state is None else state.position
        at = start if isinstance(start, Tensor) else None
        x, vad_cache = self.embed(input_ids, segment_ids, vad, start, state and state.vad)
        caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, memory, None if state is None else state.blocks[i], at)
            caches.append(cache)
        return self.ln_f(x), DecoderState(caches, vad_cache, start + input_ids.shape[1])

    def logits(self, hidden: Tensor) -> Tensor:
        return hidden @ self.wte.weight.T  # the LM head is tied to the token embeddings

    # -- training ------------------------------------------------------------------------------

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        return self.image_encoder(pixel_values)

    def forward(self, batch: dict[str, Tensor]) -> SEVLMOutput:
        """Losses on a paired batch: ``input_ids`` etc. ``[B, 2, T]``, one image per pair.

        The image tokens come from ``pixel_values`` ``[B, 3, S, S]``; or, precomputed by a
        frozen encoder, ``image_features`` ``[B, M, C]`` (before the projection); or
        ``image_tokens``, the memory itself (from :meth:`encode_images`).
        """
        if "image_tokens" in batch:
            memory = batch["image_tokens"]
        elif "image_features" in batch:
            memory = self.image_encoder.proj(batch["image_features"].to(self.wte.weight.dtype))
        else:
            memory = self.encode_images(batch["pixel_values"])
        b, pair, t = batch["input_ids"].shape
        flat = {k: batch[k].reshape(b * pair, t, *batch[k].shape[3:]) for k in _SEQUENCE_KEYS}
        hidden, _ = self.decode(
            flat["input_ids"], flat["segment_ids"], flat["vad"],
            memory.repeat_interleave(pair, dim=0),
        )  # fmt: skip
        targets = flat["labels"][:, 1:]
        known = targets != IGNORE_INDEX
        lm_loss = self._lm_loss(hidden[:, :-1], targets, known)
        counts = {"lm_loss": int(known.sum())}
        loss, vad_loss, cl_loss = lm_loss, None, None
        if self.vad_head is not None:
            known = flat["vad_mask"][:, 1:]
            vad_loss = vad_prediction_loss(
                self.vad_head(hidden[:, :-1]).float(), flat["vad"][:, 1:].float(), known
            )
            counts["vad_loss"] = int(known.sum())
            loss = loss + self.config.w_vad * vad_loss
        if self.cl_head is not None:
            valid = batch["has_pair"].bool().repeat_interleave(pair)
            cl_loss = self._contrastive(hidden, flat, memory, valid, pair)
            counts["cl_loss"] = int(valid.sum())
            loss = loss + self.config.w_cl * cl_loss
        return SEVLMOutput(loss, lm_loss, vad_loss, cl_loss, counts)

    @torch.compiler.disable  # its size depends on the labels: left out of compiled graphs
    def _lm_loss(self, hidden: Tensor, targets: Tensor, known: Tensor) -> Tensor:
        """Next-token cross-entropy, the LM head run only where there is a target (``known``):
        a third of a batch's positions are padding, and the 50k-word head is most of a small
        model's step."""
        logits = self.logits(hidden[known]).float()
        return F.cross_entropy(logits, targets[known])

    def _contrastive(self, hidden, flat, memory, valid, pair) -> Tensor:
        """In training, negatives come from the global batch. In evaluation they are the
        image's other explanation only, so the figure does not depend on how images are
        batched or spread over workers (and evaluation needs no collective)."""
        real = flat["input_ids"] != self.pad_id
        emotion = masked_mean(hidden, flat["segment_ids"] == self.emotion_segment)
        explanation = masked_mean(hidden, (flat["segment_ids"] == self.explanation_segment) & real)
        image = memory.mean(dim=1).repeat_interleave(pair, dim=0)
        return contrastive_loss(
            self.cl_head, image, emotion, explanation, valid, self.config.temperature,
            group_size=None if self.training else pair,
        )  # fmt: skip


_SEQUENCE_KEYS = ("input_ids", "labels", "segment_ids", "vad", "vad_mask")


class ContrastiveScorer(nn.Module):
    """Scores (image, emotion, explanation) triples: the paper's MLP over their concatenation.

    The first layer is split by input so an anchor's image and emotion are projected once and
    added to every candidate explanation's projection, instead of re-concatenating per pair.
    The last layer has no bias: cross-entropy over scores ignores a shared shift, so a bias
    there would never receive a gradient.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.first = nn.Linear(3 * dim, dim)
        self.rest = nn.Sequential(
            nn.ReLU(),
            nn.Linear(dim, dim), nn.ReLU(),
            nn.Linear(dim, dim), nn.ReLU(),
            nn.Linear(dim, dim), nn.ReLU(),
            nn.Linear(dim, 1, bias=False),
        )  # fmt: skip

    def forward(self, image: Tensor, emotion: Tensor, explanations: Tensor) -> Tensor:
        """Scores ``[A, K]`` of A anchors (image, emotion) against K candidate explanations."""
        dim = image.shape[-1]
        w = self.first.weight
        anchor = image @ w[:, :dim].T + emotion @ w[:, dim : 2 * dim].T + self.first.bias
        candidate = explanations @ w[:, 2 * dim :].T
        return self.rest(anchor[:, None, :] + candidate[None, :, :]).squeeze(-1)


def vad_prediction_loss(predicted: Tensor, target: Tensor, known: Tensor) -> Tensor:
    """MSE over positions whose next token's VAD the lexicon knows (zero if none does)."""
    known = known.bool()
    if not known.any():
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[known], target[known])


def _init_gpt2(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_identity_fusion(fuse: nn.Linear, dim: int) -> None:
    """At step 0 the fusion passes the token embedding through: [I | 0], bias 0."""
    with torch.no_grad():
        fuse.weight.zero_()
        fuse.weight[:, :dim] = torch.eye(dim)
        fuse.bias.zero_()


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
