"""Explanations from images: batched greedy decoding or beam search, KV-cached by default.

Every image starts from the same prompt, ``<bos> the emotion is``, so a batch stays aligned
and needs no padding. The segment switches to the explanation when `` because`` is produced.
Each new token's VAD is its word's, looked up on the text written so far, so it depends on
tokens up to that position only: the cached path (each layer's keys and values, and the VAD
encoder's, extended one token at a time) and the uncached path (the whole prefix re-run and
scored at every step, as the released code does) see the same inputs and give the same
tokens.

Greedy decoding (``beams=1``) writes one text per image. With ``graph=True`` its steps have
fixed shapes (caches preallocated for the whole text and written in place), and on CUDA each
step is one replay of a CUDA graph captured after the prompt: a cached step there is otherwise
bound by per-step overhead (Python, one launch per kernel), not by the GPU's arithmetic
(bench/RESULTS.md).

Beam search keeps several texts per image, each with its own segment and VAD; after every
step the texts, with their caches or inputs, are re-indexed to follow the hypotheses kept.
:meth:`Decoder.beam_search` says how hypotheses are scored and when an image's search stops.
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
from sevlm.model import KV, SEVLM, DecoderState, load_state, preallocated
from sevlm.sequences import BECAUSE, SequenceBuilder

MAX_NEW_TOKENS = 25
_WORD_JOINERS = "'’-"
_LAST_WORD = re.compile(rf"[^\W\d_]+(?:[{_WORD_JOINERS}][^\W\d_]+)*$")
_UNSEEN, _IN_TEXT = object(), object()
"""Markers of :meth:`Decoder._last_word`'s per-token memo."""
_EMOTION_WORDS = re.compile(r"\b(" + "|".join(sorted(EMOTIONS, key=len, reverse=True)) + r")\b")
"""The first of the nine emotions named as whole words (``awesome`` does not name awe)."""


@dataclass(frozen=True)
class Hypothesis:
    """A text written for one image and how likely the model finds it."""

    tokens: list[int]
    """Token ids after the prompt, ``<eos>`` included when the text ended."""
    score: float
    """The mean log-probability of those tokens (0 for none)."""


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
    """Greedy decoding and beam search for one model, tokenizer and lexicon."""

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
        self._words: dict[int, str | object | None] = {}
        """Per token id, what its text alone says of the word it ends (:meth:`_own_word`)."""
        self._fixed: _FixedStep | None = None
        """The last fixed-shape step, for the next call with the same shapes (on CUDA, a
        capture costs a warm-up step and empties the allocator's cache)."""

    def _token_vad(self, rows: list[list[int]]) -> Tensor:
        """VAD of each row's last token: its word's, from the text written so far."""
        out = np.zeros((len(rows), 1, 3), np.float32)
        for i, tokens in enumerate(rows):
            word = self._last_word(tokens)
            found = self.lexicon.get(word) if word else None
            if found is not None:
                out[i, 0] = found
        return torch.from_numpy(out)

    def _last_word(self, tokens: list[int]) -> str | None:
        """The word that the last token ends, in the text written so far (prompt included);
        None when the token's text does not end in a letter."""
        word = self._words.get(tokens[-1], _UNSEEN)
        if word is _UNSEEN:
            word = self._words[tokens[-1]] = self._own_word(tokens[-1])
        if word is not _IN_TEXT:
            return word
        match = _LAST_WORD.search(self._prompt_text + self.tokenizer.decode(tokens))
        return match.group(0) if match else None

    def _own_word(self, token: int) -> str | object | None:
        """What a token's text alone says of the word it ends: none (it does not end in a
        letter), the word (it begins after a separator inside the token), or ``_IN_TEXT``
        (the word may begin in the tokens before, or the token is part of a character)."""
        piece = self.tokenizer.decode([token])
        if not piece or not piece[-1].isalpha():
            return None
        match = _LAST_WORD.search(piece)
        inside = match is not None and match.start() > 0 and "\ufffd" not in piece
        if inside and piece[match.start() - 1] not in _WORD_JOINERS:
            return match.group(0)
        return _IN_TEXT

    def _fixed_step(self, memory: Tensor, state: DecoderState, length: int) -> _FixedStep:
        """A fixed-shape step for ``memory``'s batch and ``length`` positions, loaded with
        ``state``: the last one when the shapes match, else a new one."""
        if self._fixed is not None and self._fixed.fits(self.model, memory, length):
            load_state(self._fixed.state, state)
        else:
            self._fixed = None  # its graph's memory goes back before the next capture
            self._fixed = _FixedStep(self.model, memory, preallocated(state, length))
        return self._fixed

    def _room(self, max_new_tokens: int) -> int:
        """How many tokens a text may have after the prompt."""
        return min(max_new_tokens, self.model.config.n_positions - len(self.prompt.input_ids))

    @torch.no_grad()
    def generate(
        self,
        memory: Tensor,
        max_new_tokens: int = MAX_NEW_TOKENS,
        use_cache: bool = True,
        *,
        beams: int = 1,
        graph: bool = False,
    ) -> list[list[int]]:
        """Token ids after the prompt for each image's memory ``[B, M, C]``, up to ``<eos>``:
        greedy for ``beams=1``, else the best text of :meth:`beam_search`. ``graph``: greedy
        steps of fixed shapes, replayed as a CUDA graph on CUDA (see the module)."""
        if graph and (beams != 1 or not use_cache):
            raise ValueError("graph=True is for KV-cached greedy decoding (beams=1)")
        if graph and self.model.training:
            raise ValueError("graph=True needs the model in eval mode (no dropout to capture)")
        if beams == 1:
            return self._greedy(memory, max_new_tokens, use_cache, graph)
        return [h.tokens for h in self.beam_search(memory, beams, max_new_tokens, use_cache)]

    def _greedy(
        self, memory: Tensor, max_new_tokens: int, use_cache: bool, graph: bool
    ) -> list[list[int]]:
        """The most likely token at each step; a text that ended is fed pads until all have."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        room = self._room(max_new_tokens)
        texts = _Texts(self, memory, use_cache, room if graph else None)
        done = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
        for _ in range(room):
            token = texts.logits().argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            done |= token == eos
            texts.append(token)
            if bool(done.all()):
                break
        return [row[: row.index(eos) + 1] if eos in row else row for row in texts.rows]

    @torch.no_grad()
    def beam_search(
        self,
        memory: Tensor,
        beams: int,
        max_new_tokens: int = MAX_NEW_TOKENS,
        use_cache: bool = True,
    ) -> list[Hypothesis]:
        """The best hypothesis of a ``beams``-wide search for each image's memory ``[B, M, C]``.

        Each image starts from one hypothesis, the prompt, so its first ``beams`` are distinct.
        At each step every hypothesis is extended by every token, and each image's
        ``2 * beams`` best extensions by summed log-probability (float32) are ranked: those
        that end with ``<eos>`` among the first ``beams`` are finished, and the first ``beams``
        that do not end are the next step's hypotheses. A hypothesis scores the mean
        log-probability of its tokens, ``<eos>`` included (length penalty 1.0, as Hugging
        Face's default).

        An image stops as soon as none of its live hypotheses can beat its best finished one:
        log-probabilities are at most 0, so one whose log-probabilities sum to ``s`` can at best
        score ``s / room`` however it goes on (``room``: the most tokens a text may have), and
        stopping then returns what searching on would. Images that stop leave the batch; the
        others stop at ``room`` tokens. The result is an image's best finished hypothesis, or
        its best live one when none finished. Greedy decoding is not ``beams=1`` here: a
        one-wide search goes on past an ``<eos>`` that greedy decoding would stop at.
        """
        most = self.model.config.vocab_size // 2  # each step ranks 2 * beams extensions
        if not 1 <= beams <= most:
            raise ValueError(f"beams must be from 1 to {most}, not {beams}")
        eos, room = self.tokenizer.eos_token_id, self._room(max_new_tokens)
        texts = _Texts(self, memory, use_cache)
        images = list(range(memory.shape[0]))  # the images searched, in the order of `texts`
        best: list[Hypothesis | None] = [None] * len(images)
        sums = torch.zeros(len(images), 1, device=memory.device)  # of each image's hypotheses
        for length in range(1, room + 1):
            top, rows, tokens = _best_extensions(sums, texts.logits(), 2 * beams)
            for a, j in (tokens[:, :beams] == eos).nonzero().tolist():
                ended = _hypothesis(texts.rows[int(rows[a, j])] + [eos], top[a, j].item())
                if best[images[a]] is None or ended.score > best[images[a]].score:
                    best[images[a]] = ended
            live = torch.argsort((tokens == eos).int(), dim=1, stable=True)[:, :beams]
            sums, rows, tokens = (x.gather(1, live) for x in (top, rows, tokens))
            going = [
                best[i] is None or best[i].score < s / room
                for i, s in zip(images, sums[:, 0].tolist(), strict=True)
            ]
            regroup = length == 1 or not all(going)  # the rows' images change
            if not all(going):
                keep = torch.tensor(going, device=sums.device)
                sums, rows, tokens = sums[keep], rows[keep], tokens[keep]
                images = [i for i, g in zip(images, going, strict=True) if g]
            texts.select(rows.flatten(), regroup)
            texts.append(tokens.flatten())
            if not images:
                break
        for a, i in enumerate(images):  # those that reached `room` tokens
            if best[i] is None:
                best[i] = _hypothesis(texts.rows[a * sums.shape[1]], sums[a, 0].item())
        return best

    def explain(
        self,
        pixel_values: Tensor,
        max_new_tokens: int = MAX_NEW_TOKENS,
        use_cache: bool = True,
        *,
        beams: int = 1,
        graph: bool = False,
    ) -> list[Explanation]:
        """Emotion and explanation for each image of ``pixel_values [B, 3, S, S]``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                memory = self.model.encode_images(pixel_values)
            return self.explain_memory(memory, max_new_tokens, use_cache, beams=beams, graph=graph)
        finally:
            self.model.train(was_training)

    def explain_memory(
        self,
        memory: Tensor,
        max_new_tokens: int = MAX_NEW_TOKENS,
        use_cache: bool = True,
        *,
        beams: int = 1,
        graph: bool = False,
    ) -> list[Explanation]:
        """Emotion and explanation for images already encoded (``memory [B, M, C]``)."""
        rows = self.generate(memory, max_new_tokens, use_cache, beams=beams, graph=graph)
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


class _Texts:
    """N texts being written after the prompt and what the model has read of them: its caches,
    or, uncached, every input so far (re-read whole at each step). With ``fixed_room``, the
    steps after the prompt are :class:`_FixedStep`'s, for texts of up to that many tokens."""

    def __init__(
        self, decoder: Decoder, memory: Tensor, use_cache: bool, fixed_room: int | None = None
    ) -> None:
        self.decoder, self.memory, self.use_cache = decoder, memory, use_cache
        self.fixed_room = fixed_room
        self.fixed: _FixedStep | None = None
        n, device, prompt = memory.shape[0], memory.device, decoder.prompt
        self.inputs = (
            torch.as_tensor(prompt.input_ids, device=device).expand(n, -1),
            torch.as_tensor(prompt.segment_ids, device=device).expand(n, -1),
            torch.as_tensor(prompt.vad, device=device).expand(n, -1, -1),
        )
        self.unread = self.inputs
        self.state: DecoderState | None = None
        self.rows: list[list[int]] = [[] for _ in range(n)]
        self.explaining = torch.zeros(n, dtype=torch.bool, device=device)

    def logits(self) -> Tensor:
        """Each text's next-token logits ``[N, V]``."""
        model = self.decoder.model
        if self.fixed is not None:
            return self.fixed(*self.unread)
        if self.use_cache:
            hidden, self.state = model.decode(*self.unread, self.memory, self.state)
            if self.fixed_room is not None:  # the prompt is read: fixed-shape steps from here
                length = self.state.position + self.fixed_room
                self.fixed = self.decoder._fixed_step(self.memory, self.state, length)
            return model.logits(hidden[:, -1])
        # As the released code does: the whole prefix is re-read, and GPT-2's LM head scores
        # every position before the last one is taken.
        hidden, _ = model.decode(*self.inputs, self.memory)
        return model.logits(hidden)[:, -1]

    def append(self, token: Tensor) -> None:
        """Write one more token ``[N]`` on every text."""
        for row, t in zip(self.rows, token.tolist(), strict=True):
            row.append(t)
        model = self.decoder.model
        self.explaining |= token == self.decoder.because
        segment = torch.where(self.explaining, model.explanation_segment, model.emotion_segment)
        vad = self.decoder._token_vad(self.rows).to(token.device)
        self.unread = (token[:, None], segment[:, None], vad)
        if not self.use_cache:
            pairs = zip(self.inputs, self.unread, strict=True)
            self.inputs = tuple(torch.cat(pair, dim=1) for pair in pairs)

    def select(self, index: Tensor, regroup: bool) -> None:
        """Go on with the texts at ``index`` (one may be taken several times), before
        :meth:`append`. The memory and the cross-attention keys and values depend on the image
        only, so they are re-indexed only when ``regroup`` (when the rows' images change)."""
        self.rows = [list(self.rows[i]) for i in index.tolist()]
        self.explaining = self.explaining[index]
        if regroup:
            self.memory = self.memory.index_select(0, index)
        if self.state is not None:
            self.state = _select_state(self.state, index, regroup)
        if not self.use_cache:
            self.inputs = tuple(x.index_select(0, index) for x in self.inputs)


class _FixedStep:
    """KV-cached one-token steps of fixed shapes: the caches are preallocated buffers written
    in place, and the step's inputs are copied into buffers of their own. On CUDA the step is
    captured once as a CUDA graph, and each step is one replay; elsewhere it runs eagerly.
    The logits returned are overwritten by the next step.

    The images enter through the cross-attention caches of ``state``, which every call loads:
    the ``memory`` the step passes on is not read. A captured step reads the model's weights
    where they were: updated in place (an optimizer step) is fine, replaced is not (then
    build a new :class:`Decoder`)."""

    def __init__(self, model: SEVLM, memory: Tensor, state: DecoderState) -> None:
        self.model, self.memory, self.state = model, memory, state
        n, device = memory.shape[0], memory.device
        self.inputs = (
            torch.zeros(n, 1, dtype=torch.long, device=device),
            torch.zeros(n, 1, dtype=torch.long, device=device),
            torch.zeros(n, 1, 3, device=device),
        )
        self.graph: torch.cuda.CUDAGraph | None = None
        if memory.is_cuda:
            with torch.cuda.device(device):
                self.logits = self._capture()

    def fits(self, model: SEVLM, memory: Tensor, length: int) -> bool:
        """Whether this step serves ``model`` for ``memory``'s batch and ``length`` positions."""
        mine = self.memory
        same = (memory.shape, memory.dtype, memory.device) == (mine.shape, mine.dtype, mine.device)
        return model is self.model and same and self.state.blocks[0][0][0].shape[2] == length

    def _step(self) -> Tensor:
        hidden, _ = self.model.decode(*self.inputs, self.memory, self.state)
        return self.model.logits(hidden[:, -1])

    def _capture(self) -> Tensor:
        """Capture the step (after one eager run on a side stream, which picks its kernels
        and allocates their workspaces); its output buffer is what every replay writes. The
        runs write keys and values at the current position, which the first step rewrites."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            return self._step()

    def __call__(self, input_ids: Tensor, segment_ids: Tensor, vad: Tensor) -> Tensor:
        """Next-token logits ``[N, V]`` after one more token per text (each ``[N, 1, ...]``)."""
        for buffer, value in zip(self.inputs, (input_ids, segment_ids, vad), strict=True):
            buffer.copy_(value)
        if self.graph is None:
            logits = self._step()
        else:
            with torch.cuda.device(self.memory.device):
                self.graph.replay()
            logits = self.logits
        self.state.position += 1  # in place: the captured step reads this tensor
        return logits


def _select_state(state: DecoderState, index: Tensor, regroup: bool) -> DecoderState:
    """The caches of the rows at ``index``; the cross-attention ones only when ``regroup``."""

    def pick(kv: KV) -> KV:
        return kv[0].index_select(0, index), kv[1].index_select(0, index)

    blocks = [(pick(own), pick(cross) if regroup else cross) for own, cross in state.blocks]
    vad = None if state.vad is None else [pick(kv) for kv in state.vad]
    return DecoderState(blocks, vad, state.position)


def _best_extensions(sums: Tensor, logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` best one-token extensions of each image's hypotheses (``sums [n, w]``, their
    summed log-probabilities; ``logits [n * w, V]``), best first: their summed
    log-probabilities, the rows of ``logits`` they extend and their tokens, each ``[n, k]``.
    They are among each hypothesis's own ``k`` best tokens, so only those are ranked."""
    n, width = sums.shape
    best, tokens = logits.float().log_softmax(dim=-1).topk(k, dim=-1)
    top, flat = (sums[:, :, None] + best.view(n, width, k)).flatten(1).topk(k, dim=1)
    rows = flat // k + width * torch.arange(n, device=flat.device)[:, None]
    return top, rows, tokens.view(n, width * k).gather(1, flat)


def _hypothesis(tokens: list[int], total: float) -> Hypothesis:
    """Tokens whose log-probabilities sum to ``total``, scored by their mean."""
    return Hypothesis(tokens, total / len(tokens) if tokens else 0.0)
