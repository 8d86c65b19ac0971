"""Writing generated sequences as FASTA or JSON Lines. No torch here.

A generation is any object with ``prompt_id``, ``sample``, ``token_ids``, ``logprob_mean`` and
``seed`` (``evo_cli.generation.Generation``); ``settings`` are the run's sampling settings and model.

- FASTA (``.fa``, ``.fasta``, ``.fna``, ``.fas``, and stdout): one record per (prompt, sample) holding
  the generated tokens only, the header naming prompt, sample and settings. A token that is not an
  ASCII letter is written as ``N`` (random or undertrained models emit arbitrary bytes), so the
  file stays valid FASTA; the number of such tokens is logged as one warning.
- JSON Lines (``.jsonl``): one object per (prompt, sample) with the exact ``token_ids``, the decoded
  ``sequence`` (one character per id), ``logprob_mean`` and the settings.
A name ending in ``.gz`` (``gen.fa.gz``, ``gen.jsonl.gz``) is written gzip-compressed, whatever the format.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from evo_cli.errors import OptionError

from .atomic import STDOUT, atomic_open_text, check_output_path, is_special, output_name_error
from .fasta import format_fasta, open_text

log = logging.getLogger(__name__)

FORMATS = ("fasta", "jsonl")
FASTA_EXTENSIONS = (".fa", ".fasta", ".fna", ".fas")
# the header fields after prompt= and sample=, in order
SETTING_KEYS = ("n_tokens", "temperature", "top_k", "top_p", "seed", "model", "evo")


def output_format(path: str | Path | None, fmt: str = "auto") -> str:
    """``fasta`` or ``jsonl``: ``fmt`` unless auto, else by the extension (``.jsonl``, or a FASTA
    extension: ``FASTA_EXTENSIONS``; either may be followed by ``.gz``; stdout is FASTA). Checks that
    ``path`` can be written as a file."""
    check_output_path(path)
    name = "" if path in STDOUT else Path(path).name.lower()
    suffix = Path(name.removesuffix(".gz")).suffix
    named = "jsonl" if suffix == ".jsonl" else "fasta" if suffix in FASTA_EXTENSIONS else None
    if fmt != "auto":
        if fmt not in FORMATS:
            raise OptionError(f"unknown output format {fmt!r} (use {', '.join(FORMATS)})")
        # FASTA named .jsonl (or the reverse) breaks whatever opens it by its name, as in the other commands
        if named is not None and named != fmt:
            raise OptionError(f"--format {fmt} contradicts -o {path} (a {named} name): drop --format or rename "
                             "the output")
        return fmt
    if path in STDOUT:
        return "fasta"
    if named is not None:
        return named
    if is_special(path):  # /dev/stdout, a FIFO: stdout's format
        return "fasta"
    raise output_name_error(path, f"{path}: cannot tell the output format from the extension (use .jsonl or "
                     f"{', '.join(FASTA_EXTENSIONS)}, each optionally + .gz, or --format fasta|jsonl)")


def _is_letter(t: int) -> bool:
    return 65 <= t <= 90 or 97 <= t <= 122


def fasta_letters(token_ids) -> tuple[str, int]:
    """(sequence, replaced): token ids as characters, ``N`` for every id that is not an ASCII letter.

    Letters only: other printable characters can break FASTA (``>`` or ``;`` starting a line) or
    change the sequence when read back (spaces)."""
    return "".join(chr(t) if _is_letter(t) else "N" for t in token_ids), sum(not _is_letter(t) for t in token_ids)


def fasta_header(gen, settings: dict) -> str:
    """``{prompt}_sample{k} prompt={prompt} sample={k} n_tokens=.. temperature=.. ... model=.. evo=..``."""
    fields = {**settings, "seed": gen.seed}
    meta = " ".join(f"{k}={_token(fields[k])}" for k in SETTING_KEYS if k in fields)
    return f"{gen.prompt_id}_sample{gen.sample} prompt={gen.prompt_id} sample={gen.sample} {meta}"


def _token(value) -> str:
    # header values must not contain whitespace, which would split the field
    return "_".join(str(value).split())


def json_record(gen, settings: dict) -> dict:
    return {"prompt_id": gen.prompt_id, "sample": gen.sample, **settings, "seed": gen.seed,
            "sequence": "".join(chr(t) for t in gen.token_ids), "token_ids": list(gen.token_ids),
            "logprob_mean": gen.logprob_mean}


def write_generations(path: str | Path | None, generations, settings: dict, fmt: str = "auto") -> int:
    """Write ``generations`` atomically to ``path`` (``-``/None: stdout; a name ending in ``.gz``:
    gzip-compressed). Returns the number of tokens written as ``N`` in FASTA (0 for JSONL)."""
    fmt = output_format(path, fmt)
    replaced = 0
    with atomic_open_text(path) as fh:
        for gen in generations:
            if fmt == "jsonl":
                fh.write(json.dumps(json_record(gen, settings)) + "\n")
            else:
                seq, n = fasta_letters(gen.token_ids)
                replaced += n
                fh.write(format_fasta(fasta_header(gen, settings), seq))
    if replaced:
        log.warning("warning: %d generated token(s) are not letters and were written as N in the FASTA output "
                    "(write .jsonl for the exact token ids)", replaced)
    return replaced


def recorded_seed(path: str | Path) -> int | None:
    """The seed recorded in the first record of a file ``write_generations`` wrote (FASTA or JSONL),
    or None: no such file (a pipe or a device is not read), or not one of these outputs."""
    if not Path(path).is_file():
        return None
    try:
        with open_text(path) as fh:
            first = fh.readline()
        if first.startswith(">"):
            seed = next((f[5:] for f in first.split() if f.startswith("seed=")), None)
        else:
            seed = json.loads(first).get("seed")
        return int(seed) if seed is not None and str(seed).isdigit() else None
    except (OSError, EOFError, ValueError, AttributeError):
        return None


def read_generations_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file written by ``write_generations`` (plain or gzip), in order."""
    with open_text(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
