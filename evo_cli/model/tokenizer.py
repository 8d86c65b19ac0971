"""Byte tokenizer of Evo 1 and Evo 2: a token is one UTF-8 byte; vocab 512 (ids 256-511 are unused)."""

from __future__ import annotations

from evo_cli.errors import InputError

EOS_ID = 0
PAD_ID = 1


def encode(text: str) -> list[int]:
    """UTF-8 bytes of ``text``; case-sensitive ('A' = 65, 'a' = 97): upper-case DNA before scoring."""
    return list(text.encode("utf-8"))


def check_text(text, what: str) -> str:
    """``text`` if it is a str, else one InputError naming ``what`` (``sequence 3``): bytes, None or a
    number would fail deep inside with an AttributeError, or None pass for an empty sequence."""
    if not isinstance(text, str):
        hint = " (decode it: seq.decode())" if isinstance(text, (bytes, bytearray)) else ""
        raise InputError(f"{what} must be a str, not {type(text).__name__}{hint}")
    return text


def decode(ids) -> str:
    """Token ids to text, one character per id (``chr(id)``); ids outside 0-255 are not bytes."""
    return "".join(chr(int(i)) for i in ids)
