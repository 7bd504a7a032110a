"""Files written whole or not at all: a temporary file beside the target, renamed over it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path | str, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(file)``: into a temporary file beside it, renamed over
    it, so readers see the old file or the new one, never part of one. The temporary file is
    made by ``open``, not ``tempfile.mkstemp``: its mode is a plain file's (0o666 less the
    umask), not mkstemp's 0o600."""
    target = Path(path)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "xb") as f:
            write(f)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: Path | str, text: str) -> Path:
    """:func:`write_atomic` of ``text`` in UTF-8."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
