"""The offline GPT-2 tokenizer: hash-checked files, GPT-2's ids, the project tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sevlm.tokenizer import (
    EMOTION_TOKEN,
    EXPLANATION_TOKEN,
    GPT2_BPE_SHA256,
    PAD_TOKEN,
    TokenizerError,
    gpt2_bpe_dir,
    load_tokenizer,
    offline_gpt2_tokenizer,
    sha256_file,
)


def test_shipped_files_match_official_hashes() -> None:
    for name, expected in GPT2_BPE_SHA256.items():
        assert sha256_file(gpt2_bpe_dir() / name) == expected


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("Hello world", [15496, 995]),
        ("hello world", [31373, 995]),
        ("The quick brown fox", [464, 2068, 7586, 21831]),
        (" the emotion is", [262, 9942, 318]),
        ("<|endoftext|>", [50256]),
    ],
)
def test_gpt2_ids(text: str, ids: list[int]) -> None:
    assert offline_gpt2_tokenizer()(text)["input_ids"] == ids


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    for name in GPT2_BPE_SHA256:
        shutil.copy(gpt2_bpe_dir() / name, tmp_path / name)
    with open(tmp_path / "vocab.bpe", "a", encoding="utf-8") as f:
        f.write("x y\n")
    with pytest.raises(TokenizerError, match=r"is not GPT-2's vocab\.bpe"):
        offline_gpt2_tokenizer(tmp_path)
    (tmp_path / "encoder.json").unlink()
    with pytest.raises(TokenizerError, match="missing"):
        offline_gpt2_tokenizer(tmp_path)


def test_project_tokens_added_once() -> None:
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 50257 + 3
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == 50257
    ids = tokenizer.convert_tokens_to_ids([EMOTION_TOKEN, EXPLANATION_TOKEN])
    assert ids == [50258, 50259]
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == 50256


def test_saved_tokenizer_reloads(tmp_path: Path) -> None:
    tokenizer = load_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert len(again) == len(tokenizer)
    text = " the emotion is awe because the tall mountain"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_unreachable_name_is_a_clear_error() -> None:
    with pytest.raises(TokenizerError, match="gpt2-bpe"):
        load_tokenizer("no-such-org/no-such-tokenizer")


def test_gpt2_family_name_falls_back_offline() -> None:
    # distilgpt2's tokenizer is GPT-2's BPE: offline, the shipped files stand in for it.
    tokenizer = load_tokenizer("distilgpt2")
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.pad_token == PAD_TOKEN


def test_adding_project_tokens_again_changes_nothing() -> None:
    from sevlm.tokenizer import add_project_tokens

    tokenizer = load_tokenizer()
    ids = tokenizer(" the emotion is awe")["input_ids"]
    add_project_tokens(tokenizer)
    assert len(tokenizer) == 50260
    assert tokenizer(" the emotion is awe")["input_ids"] == ids
