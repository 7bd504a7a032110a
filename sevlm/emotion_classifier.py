"""A text-to-emotion classifier, to measure the emotional alignment of generated explanations.

Emotional alignment asks whether an explanation reads like the emotion the painting evokes:
a classifier reads each generated explanation, and we count how often it names the image's
dominant emotion. ArtEmis's own classifier is an LSTM over GloVe vectors, which cannot be
downloaded here, so the project trains its own on the training split's utterances: a
fastText-style bag of word unigrams and bigrams (``sevlm.text`` tokens), averaged by an
``nn.EmbeddingBag`` and read by one linear layer into the nine emotions. It trains in seconds
on the sample and in minutes on all of ArtEmis on a CPU, and reports its held-out accuracy.

It is saved as a folder of ``classifier.safetensors`` (the weights: nothing is unpickled on
load) and ``classifier.json`` (format, vocabulary, sizes and free-form provenance ``meta``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sevlm.emotions import EMOTIONS, normalize_emotion
from sevlm.text import tokenize_utterance

CLASSIFIER_DIR = "emotion-classifier"
"""The default folder name for a saved classifier, beside the data or the model."""
FORMAT = "sevlm-emotion-classifier/1"
WEIGHTS_FILE = "classifier.safetensors"
INFO_FILE = "classifier.json"
MAX_VOCAB = 50_000
"""The most frequent n-grams kept in the vocabulary."""
LEARNING_RATE = 0.1
"""Adam's step size."""
PREDICT_BATCH = 4096
"""Texts per forward pass when predicting."""


class ClassifierError(ValueError):
    """A classifier that cannot be trained, used or loaded; the message says why (and where)."""


@dataclass
class ClassifierFit:
    """What training reports."""

    train_texts: int
    """Texts trained on."""
    heldout_texts: int
    """Texts held out to measure accuracy."""
    heldout_accuracy: float | None
    """Share of held-out texts classified right after the last epoch (None: none held out)."""
    epochs: int
    """Passes over the training texts."""
    seconds: float
    """Wall time of the whole training, vocabulary and evaluation included."""


def _ngrams(text: str) -> list[str]:
    """The text's word unigrams and bigrams (tokens never hold spaces: bigrams are unique)."""
    tokens = tokenize_utterance(text)
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def _label(emotion: str) -> int:
    canonical = normalize_emotion(emotion)
    if canonical is None:
        raise ClassifierError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
    return EMOTIONS.index(canonical)


class _BagOfNgrams(nn.Module):
    def __init__(self, vocab_size: int, dim: int, device: str | None = None) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", sparse=True, device=device)
        self.output = nn.Linear(dim, len(EMOTIONS), device=device)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.output(self.embedding(ids, offsets))


@dataclass
class _Encoded:
    """Texts as n-gram ids: one flat tensor, each text a slice of it (possibly empty)."""

    ids: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor

    def bags(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids and offsets of the texts ``rows``, as ``nn.EmbeddingBag`` takes them."""
        lengths = self.lengths[rows]
        offsets = torch.zeros_like(lengths)
        offsets[1:] = lengths.cumsum(0)[:-1]
        shift = torch.repeat_interleave(self.starts[rows] - offsets, lengths)
        return self.ids[torch.arange(len(shift)) + shift], offsets


class EmotionClassifier:
    """Emotion names for texts, from a bag of word unigrams and bigrams."""

    def __init__(
        self,
        vocab: Sequence[str],
        weights: Mapping[str, torch.Tensor],
        meta: dict | None = None,
    ) -> None:
        """``weights``: ``embedding.weight`` [len(vocab), dim], ``output.weight`` [9, dim],
        ``output.bias`` [9]; float32 tensors are used as given (not copied)."""
        self.vocab = list(vocab)
        self._index = {gram: i for i, gram in enumerate(self.vocab)}
        if len(self._index) != len(self.vocab):
            raise ClassifierError("the vocabulary lists an n-gram more than once")
        embedding = weights.get("embedding.weight")
        if embedding is None or embedding.dim() != 2:
            raise ClassifierError("weights lack a 2-d embedding.weight")
        if not all(w.is_floating_point() for w in weights.values()):
            raise ClassifierError("weights must be floating point")
        self.net = _BagOfNgrams(len(self.vocab), embedding.shape[1], device="meta")
        state = {name: w.to(torch.float32) for name, w in weights.items()}
        try:
            self.net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise ClassifierError(f"weights do not fit the vocabulary: {e}") from e
        self.meta: dict = dict(meta or {})
        """Free-form provenance, saved in classifier.json and returned on load."""

    @property
    def dim(self) -> int:
        return self.net.embedding.embedding_dim

    def _encode(self, texts: Sequence[str]) -> _Encoded:
        ids: list[int] = []
        lengths: list[int] = []
        for text in texts:
            known = [i for gram in _ngrams(text) if (i := self._index.get(gram)) is not None]
            ids += known
            lengths.append(len(known))
        lengths_t = torch.tensor(lengths, dtype=torch.long)
        starts = torch.zeros_like(lengths_t)
        starts[1:] = lengths_t.cumsum(0)[:-1]
        return _Encoded(torch.tensor(ids, dtype=torch.long), starts, lengths_t)

    @torch.inference_mode()
    def _predict_indices(self, encoded: _Encoded) -> torch.Tensor:
        self.net.eval()
        n = len(encoded.lengths)
        chunks = [
            self.net(*encoded.bags(torch.arange(lo, min(lo + PREDICT_BATCH, n)))).argmax(dim=1)
            for lo in range(0, n, PREDICT_BATCH)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The emotion of each text; a text with no known n-gram gets the bias's emotion."""
        return [EMOTIONS[i] for i in self._predict_indices(self._encode(texts)).tolist()]

    def accuracy(self, texts: Sequence[str], emotions: Sequence[str]) -> float:
        """The share of ``texts`` whose predicted emotion is the one given."""
        if len(texts) != len(emotions):
            raise ClassifierError(f"{len(texts)} texts but {len(emotions)} emotions")
        if not texts:
            raise ClassifierError("no texts to measure accuracy on")
        truth = torch.tensor([_label(e) for e in emotions], dtype=torch.long)
        predicted = self._predict_indices(self._encode(texts))
        return (predicted == truth).sum().item() / len(truth)

    def save(self, folder: Path | str) -> Path:
        """Write the classifier into ``folder``, replacing any classifier saved there.

        The files are written into a temporary sibling folder which is then renamed into
        place, so a reader finds the old classifier, the new one, or (for an instant) none,
        never a half-written one. A folder that holds anything but a classifier is refused.
        """
        folder = Path(folder)
        replacing = folder.exists() or folder.is_symlink()
        if (
            replacing
            and not (folder / INFO_FILE).is_file()
            and (not folder.is_dir() or any(folder.iterdir()))
        ):
            raise ClassifierError(f"{folder}: exists and is not a saved emotion classifier")
        info = {
            "format": FORMAT,
            "emotions": list(EMOTIONS),
            "dim": self.dim,
            "meta": self.meta,
            "vocab": self.vocab,
        }
        text = json.dumps(info, ensure_ascii=False) + "\n"  # fails before touching the disk
        weights = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-new-", dir=folder.parent))
        try:
            save_file(weights, staging / WEIGHTS_FILE, metadata={"format": FORMAT})
            (staging / INFO_FILE).write_text(text, encoding="utf-8")
            staging.chmod(0o755)
            if replacing:
                _swap(staging, folder)
            else:
                staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> EmotionClassifier:
        """A classifier saved by :meth:`save` (safetensors weights only; nothing unpickled)."""
        folder = Path(folder)
        try:
            info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ClassifierError(f"{folder}: not a saved emotion classifier ({e})") from e
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            found = info.get("format") if isinstance(info, dict) else None
            raise ClassifierError(f"{folder}: unknown format {found!r}, want {FORMAT}")
        vocab, meta = info.get("vocab"), info.get("meta", {})
        if info.get("emotions") != list(EMOTIONS):
            raise ClassifierError(f"{folder}: emotions {info.get('emotions')} are not {EMOTIONS}")
        if not isinstance(vocab, list) or not all(isinstance(g, str) for g in vocab):
            raise ClassifierError(f"{folder}: {INFO_FILE} has no list of n-grams as vocab")
        if not isinstance(meta, dict):
            raise ClassifierError(f"{folder}: {INFO_FILE} has a meta that is not an object")
        try:
            weights = load_file(folder / WEIGHTS_FILE)
        except (OSError, SafetensorError) as e:
            raise ClassifierError(f"{folder}: cannot read {WEIGHTS_FILE} ({e})") from e
        try:
            classifier = cls(vocab, weights, meta)
        except ClassifierError as e:
            raise ClassifierError(f"{folder}: {e}") from e
        if classifier.dim != info.get("dim"):
            raise ClassifierError(
                f"{folder}: weights are {classifier.dim} wide, {INFO_FILE} says {info.get('dim')}"
            )
        return classifier


def _swap(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``, moving the old ``folder`` aside and deleting it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
    try:
        folder.rename(trash / folder.name)
        try:
            staging.rename(folder)
        except OSError:
            (trash / folder.name).rename(folder)
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Training runs thousands of tiny steps: more threads only add overhead, and where other
    work shares the CPU they wait on each other (measured: several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_classifier(
    train: Sequence[tuple[str, str]],
    heldout: Sequence[tuple[str, str]] = (),
    *,
    seed: int = 0,
    epochs: int = 5,
    dim: int = 64,
    min_count: int = 2,
    batch_size: int = 256,
    meta: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[EmotionClassifier, ClassifierFit]:
    """Train on ``(text, emotion)`` pairs; measure accuracy on ``heldout``.

    The vocabulary is the word unigrams and bigrams seen at least ``min_count`` times in the
    training texts (the :data:`MAX_VOCAB` most frequent). Same data and seed, same weights;
    torch's global random state is left alone (and its thread count, after a single-threaded
    training). The classifier's ``meta`` is ``meta`` plus
    ``fit`` (the :class:`ClassifierFit` as a dict) and ``settings`` (how it was trained).
    ``progress``, when given, gets one line per epoch.

    Training takes ``epochs * len(train) / batch_size`` Adam steps: on a few hundred or
    thousand texts, batches of 16 to 64 give it enough steps to learn (and generalize better).
    """
    started = time.perf_counter()
    if not train:
        raise ClassifierError("no training texts: an emotion classifier needs labelled texts")
    for name, value in (
        ("epochs", epochs),
        ("dim", dim),
        ("min_count", min_count),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise ClassifierError(f"{name} must be at least 1, got {value}")
    labels = torch.tensor([_label(e) for _, e in train], dtype=torch.long)
    heldout_labels = [_label(e) for _, e in heldout]

    counts = Counter(gram for text, _ in train for gram in _ngrams(text))
    frequent = sorted((-n, gram) for gram, n in counts.items() if n >= min_count)
    vocab = [gram for _, gram in frequent[:MAX_VOCAB]]
    generator = torch.Generator().manual_seed(seed)
    weights = {
        "embedding.weight": torch.empty(len(vocab), dim).uniform_(
            -1 / dim, 1 / dim, generator=generator
        ),
        "output.weight": torch.zeros(len(EMOTIONS), dim),
        "output.bias": torch.zeros(len(EMOTIONS)),
    }
    classifier = EmotionClassifier(vocab, weights)
    data = classifier._encode([text for text, _ in train])
    heldout_data = classifier._encode([text for text, _ in heldout])
    heldout_truth = torch.tensor(heldout_labels, dtype=torch.long)

    def heldout_accuracy() -> float | None:
        if not heldout_labels:
            return None
        right = (classifier._predict_indices(heldout_data) == heldout_truth).sum().item()
        return right / len(heldout_labels)

    net = classifier.net
    optimizers = (  # sparse: each step touches only the n-grams of its batch
        torch.optim.SparseAdam([net.embedding.weight], lr=LEARNING_RATE),
        torch.optim.Adam(net.output.parameters(), lr=LEARNING_RATE),
    )
    steps, step = epochs * -(-len(train) // batch_size), 0
    accuracy = None
    with _one_thread():
        for epoch in range(1, epochs + 1):
            net.train()
            total = 0.0
            for rows in torch.randperm(len(train), generator=generator).split(batch_size):
                loss = F.cross_entropy(net(*data.bags(rows)), labels[rows])
                for optimizer in optimizers:
                    optimizer.zero_grad()
                    for group in optimizer.param_groups:  # linear decay to zero, as in fastText
                        group["lr"] = LEARNING_RATE * (1 - step / steps)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                step += 1
                total += loss.item() * len(rows)
            if progress is not None or epoch == epochs:
                accuracy = heldout_accuracy()
            if progress is not None:
                line = f"epoch {epoch}/{epochs}: loss {total / len(train):.4f}"
                progress(line if accuracy is None else f"{line}, held-out accuracy {accuracy:.4f}")

    fit = ClassifierFit(
        train_texts=len(train),
        heldout_texts=len(heldout),
        heldout_accuracy=accuracy,
        epochs=epochs,
        seconds=time.perf_counter() - started,
    )
    settings = {
        "seed": seed,
        "epochs": epochs,
        "dim": dim,
        "min_count": min_count,
        "batch_size": batch_size,
        "max_vocab": MAX_VOCAB,
        "learning_rate": LEARNING_RATE,
        "vocab_size": len(vocab),
    }
    classifier.meta = {**(meta or {}), "fit": asdict(fit), "settings": settings}
    return classifier, fit
