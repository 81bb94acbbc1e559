"""``DataConfig``: where the training text comes from, how it is split, tokenised and cached.

Every field is checked on construction (``ValueError`` naming the field, what was expected and what
arrived), so a bad config fails before anything is read or written. Load it from YAML with
``mesanet.utils.config.load(DataConfig, path)`` or ``from_dict(DataConfig, mapping)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mesanet.utils.validation import check_int, is_real

#: Special tokens of every mesanet tokenizer, in id order: the end-of-document token (also used as
#: bos/eos) and a padding token that never occurs in the training stream.
EOD_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN)

#: Byte-level BPE starts from the 256 byte symbols; the vocabulary must hold those plus the specials.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 2**32 - 1


#: Environment variable naming the data-cache folder (tokenizers, token caches); see :func:`user_cache_dir`.
CACHE_ENV = "MESANET_CACHE"


def user_cache_dir() -> Path:
    """The user's data-cache folder: ``$MESANET_CACHE``, else ``$XDG_CACHE_HOME/mesanet``, else
    ``~/.cache/mesanet``; never a folder relative to the working directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mesanet").resolve()


class DataError(ValueError):
    """Bad data input: a config value, a missing or empty source, a corpus too small for the request."""


@dataclass
class DataConfig:
    """What to train on.

    ``source``:
      * ``"stdlib"`` - the Python standard library source of the running interpreter (no download;
        write ``./stdlib`` for a local folder of that name);
      * a path to a local text file or folder (folders are searched recursively for text files);
      * ``"hf:NAME_OR_LOCAL_PATH[@CONFIG][:SPLIT[:TEXT_FIELD]]"`` - a Hugging Face ``datasets``
        dataset: a local data file (.jsonl/.json/.csv/.parquet/.txt/.arrow), a folder of data files
        or one written by ``save_to_disk``, or a hub name (needs network unless already cached).
        SPLIT defaults to ``train``; TEXT_FIELD to ``text`` (or the only string column).

    ``needle_fraction`` > 0 mixes generated needle (passkey) documents into both splits, ``needle_fraction`` of
    each split's characters: filler lines of the split with ``KEY = "DIGITS"`` hidden in them and asked for at
    the end (``mesanet.data.needle_docs``; keys from ``needle_keys``, by default 196 built-in names that are
    never the needle test's ``SECRET_CODE``).
    """

    source: str = "stdlib"
    seq_len: int = 256  # tokens per training sequence
    vocab_size: int = 4096  # BPE vocabulary, special tokens included
    val_fraction: float = 0.05  # share of documents held out for validation, in (0, 1)
    seed: int = 0  # document subset / split / packing order
    max_documents: int | None = None  # cap on documents (deterministic subset), for quick runs/tests
    cache_dir: str | None = None  # tokenizer + token caches, keyed by content hashes; None: user_cache_dir()
    needle_fraction: float = 0.0  # share of each split's characters in generated needle documents, in [0, 1)
    needle_doc_chars: int = 800  # filler characters of a needle document: uniform in 1 .. this (~3.5 per token)
    needle_min_digits: int = 4  # digits of a needle value: needle_min_digits .. needle_max_digits
    needle_max_digits: int = 6
    needle_keys: list[str] | None = None  # the needles' variable names; None: the built-in list (no SECRET_CODE)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise DataError(
                f"DataConfig.source: expected 'stdlib', a path to a text file or folder, or 'hf:NAME', got {self.source!r}"
            )
        check_int("DataConfig.seq_len", self.seq_len, minimum=2, what="one prediction needs two tokens", error=DataError)
        check_int(
            "DataConfig.vocab_size",
            self.vocab_size,
            minimum=MIN_VOCAB_SIZE,
            error=DataError,
            what=f"256 byte symbols + {len(SPECIAL_TOKENS)} special tokens {list(SPECIAL_TOKENS)}",
        )
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise DataError(f"DataConfig.vocab_size: expected at most {MAX_VOCAB_SIZE}, got {self.vocab_size}")
        if not is_real(self.val_fraction, finite=False):
            raise DataError(f"DataConfig.val_fraction: expected a number in (0, 1), got {self.val_fraction!r}")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise DataError(f"DataConfig.val_fraction: expected a number strictly between 0 and 1, got {self.val_fraction!r}")
        self.val_fraction = float(self.val_fraction)
        check_int("DataConfig.seed", self.seed, minimum=0, error=DataError)
        check_int(
            "DataConfig.max_documents", self.max_documents, minimum=1, optional=True, what="None: all documents", error=DataError
        )
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir.strip()):
            raise DataError(
                f"DataConfig.cache_dir: expected a folder path or null (the user cache folder), got {self.cache_dir!r}"
            )
        self._check_needles()

    def _check_needles(self) -> None:
        if not is_real(self.needle_fraction) or not 0.0 <= float(self.needle_fraction) < 1.0:
            raise DataError(
                f"DataConfig.needle_fraction: expected a number in [0, 1) (0: no needle documents), got {self.needle_fraction!r}"
            )
        self.needle_fraction = float(self.needle_fraction)
        check_int(
            "DataConfig.needle_doc_chars", self.needle_doc_chars, minimum=1, what="the longest needle filler", error=DataError
        )
        check_int("DataConfig.needle_min_digits", self.needle_min_digits, minimum=1, maximum=18, error=DataError)
        check_int(
            "DataConfig.needle_max_digits",
            self.needle_max_digits,
            minimum=self.needle_min_digits,
            maximum=18,
            what=f"at least needle_min_digits = {self.needle_min_digits}",
            error=DataError,
        )
        keys = self.needle_keys
        if keys is not None:
            if not isinstance(keys, (list, tuple)) or not keys or not all(isinstance(k, str) and k.isidentifier() for k in keys):
                raise DataError(
                    f"DataConfig.needle_keys: expected null (the built-in keys) or a non-empty list of Python "
                    f"identifiers, got {keys!r}"
                )
            if len(set(keys)) != len(keys):
                raise DataError(f"DataConfig.needle_keys: expected distinct keys, got {list(keys)}")
            self.needle_keys = list(keys)

    @property
    def cache_root(self) -> Path:
        """The cache folder: ``cache_dir``, or :func:`user_cache_dir` when it is ``None``."""
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else user_cache_dir()
