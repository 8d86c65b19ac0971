"""Byte tokenizer of Evo 1 and Evo 2: a token is one UTF-8 byte; vocab 512 (ids 256-511 are unused)."""

from __future__ import annotations

EOS_ID = 0
PAD_ID = 1


def encode(text: str) -> list[int]:
    """UTF-8 bytes of ``text``; case-sensitive ('A' = 65, 'a' = 97): upper-case DNA before scoring."""
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Token ids to text, one character per id (``chr(id)``); ids outside 0-255 are not bytes."""
    return "".join(chr(int(i)) for i in ids)
