"""Explanations from images: batched greedy decoding, KV-cached by default.

Every image starts from the same prompt, ``<bos> the emotion is``, so a batch stays aligned
and needs no padding. The segment switches to the explanation when `` because`` is produced.
Each new token's VAD is its word's, looked up on the text written so far, so it depends on
tokens up to that position only: the cached path (each layer's keys and values, and the VAD
encoder's, extended one token at a time) and the uncached path (the whole prefix re-run at
every step, as the released code does) see the same inputs and give the same tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sevlm.emotions import EMOTIONS, normalize_emotion
from sevlm.lexicon import VADLexicon
from sevlm.model import SEVLM, DecoderState
from sevlm.sequences import BECAUSE, SequenceBuilder

MAX_NEW_TOKENS = 25
_LAST_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*$")
_EMOTION_WORDS = re.compile(r"\b(" + "|".join(sorted(EMOTIONS, key=len, reverse=True)) + r")\b")
"""The first of the nine emotions named as whole words (``awesome`` does not name awe)."""


@dataclass
class Explanation:
    """What the model says about one image."""

    emotion: str
    """One of the nine emotions, or ``unknown`` when the text names none."""
    explanation: str
    """The text after ``because``."""
    vad: tuple[float, float, float] | None
    """Mean lexicon VAD of the explanation's known words (None when it has none)."""
    text: str
    """Everything generated after the prompt."""


class Decoder:
    """Greedy decoding for one model, tokenizer and lexicon."""

    def __init__(
        self, model: SEVLM, tokenizer: PreTrainedTokenizerBase, lexicon: VADLexicon
    ) -> None:
        self.model, self.tokenizer, self.lexicon = model, tokenizer, lexicon
        self.prompt = SequenceBuilder(tokenizer, lexicon, model.config.max_len).prompt()
        self.because = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(BECAUSE))
        if len(self.because) != 1:
            raise ValueError("' because' must be one token for the segment switch")
        self.because = self.because[0]
        self._prompt_text = tokenizer.decode(self.prompt.input_ids[1:])

    def _token_vad(self, rows: list[list[int]]) -> Tensor:
        """VAD of each row's last token: its word's, from the text written so far."""
        out = np.zeros((len(rows), 1, 3), np.float32)
        for i, tokens in enumerate(rows):
            piece = self.tokenizer.decode(tokens[-1:])
            if not piece or not piece[-1].isalpha():
                continue
            match = _LAST_WORD.search(self._prompt_text + self.tokenizer.decode(tokens))
            found = self.lexicon.get(match.group(0)) if match else None
            if found is not None:
                out[i, 0] = found
        return torch.from_numpy(out)

    @torch.no_grad()
    def generate(
        self, memory: Tensor, max_new_tokens: int = MAX_NEW_TOKENS, use_cache: bool = True
    ) -> list[list[int]]:
        """Token ids after the prompt for each image's memory ``[B, M, C]``, up to ``<eos>``."""
        model, device = self.model, memory.device
        b = memory.shape[0]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids = torch.as_tensor(self.prompt.input_ids, device=device).expand(b, -1)
        segs = torch.as_tensor(self.prompt.segment_ids, device=device).expand(b, -1)
        vad = torch.as_tensor(self.prompt.vad, device=device).expand(b, -1, -1)
        state: DecoderState | None = None
        new_ids, new_segs, new_vad = ids, segs, vad
        rows: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=device)
        explaining = torch.zeros(b, dtype=torch.bool, device=device)
        room = min(max_new_tokens, model.config.n_positions - ids.shape[1])
        for _ in range(room):
            if use_cache:
                hidden, state = model.decode(new_ids, new_segs, new_vad, memory, state)
            else:
                hidden, _ = model.decode(ids, segs, vad, memory)
            token = model.logits(hidden[:, -1]).argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            for i, t in enumerate(token.tolist()):
                if not done[i]:
                    rows[i].append(t)
            done |= token == eos
            if bool(done.all()):
                break
            explaining |= token == self.because
            new_ids = token[:, None]
            new_segs = torch.where(explaining, model.explanation_segment, model.emotion_segment)[
                :, None
            ]
            new_vad = self._token_vad(rows).to(device)
            ids = torch.cat([ids, new_ids], dim=1)
            segs = torch.cat([segs, new_segs], dim=1)
            vad = torch.cat([vad, new_vad], dim=1)
        return rows

    def explain(
        self, pixel_values: Tensor, max_new_tokens: int = MAX_NEW_TOKENS, use_cache: bool = True
    ) -> list[Explanation]:
        """Emotion and explanation for each image of ``pixel_values [B, 3, S, S]``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                memory = self.model.encode_images(pixel_values)
            return self.explain_memory(memory, max_new_tokens, use_cache)
        finally:
            self.model.train(was_training)

    def explain_memory(
        self, memory: Tensor, max_new_tokens: int = MAX_NEW_TOKENS, use_cache: bool = True
    ) -> list[Explanation]:
        """Emotion and explanation for images already encoded (``memory [B, M, C]``)."""
        rows = self.generate(memory, max_new_tokens, use_cache)
        return [self.parse(self.tokenizer.decode(r, skip_special_tokens=True)) for r in rows]

    def parse(self, text: str) -> Explanation:
        """Split generated text into the emotion and the explanation."""
        head, _, tail = text.partition(BECAUSE)
        found = _EMOTION_WORDS.search(" ".join(head.lower().split()))
        emotion = normalize_emotion(head) or (found.group(1) if found else "unknown")
        explanation = " ".join(tail.split())
        vad = self.lexicon.text_vad(explanation)
        return Explanation(
            emotion, explanation, None if vad is None else tuple(float(x) for x in vad), text
        )
