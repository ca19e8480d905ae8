"""Tokenizers on disk: what ``--tokenizer PATH`` loads, what an export ships, and the
byte-level BPE trainer behind ``tritterctl tokenizer train``.

A tokenizer is a ``tokenizer.json`` (the ``tokenizers`` library's format) or a Hugging Face
model folder holding one (its ``tokenizer_config.json`` names the end-of-text token).  tritter
separates documents with that end-of-text token and encodes text with
``encode_special_tokens = True``: text that merely looks like a special token
(``<|endoftext|>`` typed in a document) is split into ordinary tokens, so only the separator
tritter inserts is a special id.  The folders written here set ``split_special_tokens: true``
so ``transformers.AutoTokenizer`` does the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tritter.formats.corpus import DataError
from tritter.formats.pathkind import open_regular, special_path_problem
from tritter.protocol.oserrors import error_reason

if TYPE_CHECKING:
    import tokenizers

EOT = "<|endoftext|>"
PAD = "<|pad|>"
# Tried in order when a tokenizer.json comes without a tokenizer_config.json naming its eos.
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>")
PAD_CANDIDATES = (PAD, "<pad>", "[PAD]")
VOCAB_MULTIPLE = 64  # the model's embedding rows: the tokenizer's ids rounded up to this
MIN_VOCAB = 258  # a trained BPE: 256 byte tokens + <|endoftext|> + <|pad|>
MAX_VOCAB = 1 << 20


def model_vocab_size(tokenizer_ids: int) -> int:
    """Rows of the model's embedding for a tokenizer with ids ``0 .. tokenizer_ids-1``:
    rounded up to a multiple of 64 (tensor-core friendly, as nanoGPT pads GPT-2's 50257 to 50304)."""
    return -(-tokenizer_ids // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


@dataclass(frozen=True)
class TokenizerSpec:
    """A loaded tokenizer definition.

    ``json``: the tokenizer.json text; ``eot``/``pad``: special token strings (``pad`` may be
    None: the eot then pads); ``source``: where it came from (a path or "embedded");
    ``digest``: sha256 hex of the json text and the eot choice (the identity resume checks).
    """

    json: str
    eot: str
    pad: str | None
    source: str
    digest: str = field(default="")
    ids: int = 0  # 1 + the largest id the tokenizer can produce
    eot_id: int = 0
    pad_id: int = 0  # the pad token's id, the eot's when there is none

    def build(self) -> tokenizers.Tokenizer:
        """A fresh ``tokenizers.Tokenizer`` that never turns document text into special ids."""
        import tokenizers

        tok = tokenizers.Tokenizer.from_str(self.json)
        tok.encode_special_tokens = True
        return tok



def spec_from_json(text: str, source: str, eot: str | None = None, pad: str | None = None) -> TokenizerSpec:
    """Parse and check a tokenizer.json text; pick eot/pad from the candidates when not given.
    Raises DataError (one line) when it does not load or has no end-of-text token."""
    import tokenizers

    try:
        tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{source}: not a tokenizer.json that the tokenizers library loads ({str(e).splitlines()[0][:200]})") from None
    vocab = tok.get_vocab(with_added_tokens=True)
    if eot is None or eot not in vocab:
        eot = next((c for c in EOT_CANDIDATES if c in vocab), None)
    if eot is None:
        raise DataError(f"{source}: tokenizer has no end-of-text token ({', '.join(EOT_CANDIDATES[:3])}, ...) to separate documents")
    if pad is None or pad not in vocab:
        pad = next((c for c in PAD_CANDIDATES if c in vocab), None)
    digest = hashlib.sha256(text.encode() + b"\0" + eot.encode()).hexdigest()
    return TokenizerSpec(json=text, eot=eot, pad=pad, source=source, digest=digest, ids=max(vocab.values()) + 1,
                         eot_id=vocab[eot], pad_id=vocab[pad if pad is not None else eot])


def _special(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer_spec(path: Path) -> TokenizerSpec:
    """``--tokenizer PATH``: a tokenizer.json file or a Hugging Face folder holding one (its
    tokenizer_config.json's eos/pad tokens are used).  Raises DataError (one line)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"tokenizer not found: {path}")
    if problem := special_path_problem(path):  # a FIFO/socket/device: refuse before any open
        raise DataError(problem)
    eot = pad = None
    if path.is_dir():
        config = path / "tokenizer_config.json"
        if config.exists():
            try:
                with open_regular(config) as f:  # never blocks on a FIFO (formats/pathkind.py)
                    meta = json.loads(f.read().decode("utf-8"))
            except (OSError, ValueError) as e:
                raise DataError(f"{config}: not readable JSON ({e})") from None
            eot, pad = _special(meta.get("eos_token")), _special(meta.get("pad_token"))
        path = path / "tokenizer.json"
        if not path.exists():
            raise DataError(f"{path.parent}: no tokenizer.json (save a fast tokenizer: AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")
    try:
        with io.TextIOWrapper(open_regular(path), encoding="utf-8") as f:  # as read_text: universal newlines
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {error_reason(e)}") from None
    return spec_from_json(text, str(path), eot, pad)


def hf_tokenizer_files(spec: TokenizerSpec, model_max_length: int) -> dict[str, bytes]:
    """The files of a Hugging Face tokenizer folder (name -> content) that
    ``AutoTokenizer.from_pretrained`` loads as a PreTrainedTokenizerFast giving tritter's ids."""
    pad = spec.pad if spec.pad is not None else spec.eot

    def dump(obj: object) -> bytes:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()

    return {
        "tokenizer.json": spec.json.encode(),
        "tokenizer_config.json": dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": spec.eot,
                "eos_token": spec.eot,
                "pad_token": pad,
                "unk_token": None,
                "add_bos_token": False,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "split_special_tokens": True,
                "model_max_length": model_max_length,
            }
        ),
        "special_tokens_map.json": dump({"bos_token": spec.eot, "eos_token": spec.eot, "pad_token": pad}),
    }


# --------------------------------------------------------------------------- training


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, show_progress: bool = False) -> tokenizers.Tokenizer:
    """Train a byte-level BPE (GPT-2 pre-tokenizer, no prefix space, no normalizer) on ``texts``
    (streamed: any iterator of strings) with ``<|endoftext|>`` (id 0) and ``<|pad|>`` (id 1).

    ``vocab_size`` counts every id, specials included (at least 258: 256 bytes + 2 specials).
    Deterministic for the same input order.  Raises DataError for a vocab_size out of range.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DataError(f"--vocab-size must be between {MIN_VOCAB} and {MAX_VOCAB}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False so that a document encoded in pieces cut at whitespace gets the
    # ids of the whole document (formats/corpus.py relies on that).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT, PAD],  # list order fixes ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def write_tokenizer_folder(tok: tokenizers.Tokenizer, out: Path, model_max_length: int = 2048) -> TokenizerSpec:
    """Write ``out/`` (tokenizer.json, tokenizer_config.json, special_tokens_map.json) and return
    its spec, replacing a tokenizer already there so that an error or a kill part-way leaves
    the old one as it was: a new folder, or one holding only these files, is built beside it
    and swapped in whole (``formats.files.atomic_dir``); a folder that holds other files too (a
    model folder) keeps them, and each of the three is replaced atomically, tokenizer.json (the
    identity runs check) last.  The caller decides whether replacing is allowed (``--force``).
    Raises OSError from the file system."""
    from tritter.formats.files import atomic_dir, atomic_write

    out = Path(out)
    spec = spec_from_json(tok.to_str(), str(out), EOT, PAD)
    files = hf_tokenizer_files(spec, model_max_length)
    if out.is_dir() and any(p.name not in files for p in out.iterdir()):
        for name in sorted(files, key=lambda n: n == "tokenizer.json"):
            atomic_write(out / name, files[name])
        return spec
    mode = stat.S_IMODE(out.stat().st_mode) if out.is_dir() else 0o777 & ~_umask()
    with atomic_dir(out) as tmp:
        os.chmod(tmp, mode)  # mkdtemp makes 0700: keep the old folder's mode, or the umask's
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return spec


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

