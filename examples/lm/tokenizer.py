"""Text to token ids and back.

A tokenizer is anything with the ``Tokenizer`` interface: a ``name``, a
``vocab_size``, ``encode(text) -> np.ndarray`` of int32 ids and
``decode(ids) -> str``. ``make(name, vocab_size, text)`` builds one by name;
``text`` is the training corpus, for tokenizers learned from it (a BPE
trained locally would be one; the byte tokenizer ignores it).

Text read from files keeps bytes that are not UTF-8 as surrogate escapes
(``errors='surrogateescape'``), so byte-level tokens are exactly the file's
bytes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from examples.lm.config import UsageError


class Tokenizer(Protocol):
  name: str
  vocab_size: int

  def encode(self, text: str) -> np.ndarray:
    """Token ids of ``text``: a 1-D int32 array."""
    ...

  def decode(self, ids) -> str:
    """The text of ``ids``."""
    ...


class ByteTokenizer:
  """One token per byte of the UTF-8 text: vocabulary 256, nothing to learn.

  >>> tok = ByteTokenizer()
  >>> tok.encode('hé')
  array([104, 195, 169], dtype=int32)
  >>> tok.decode([104, 195, 169])
  'hé'
  """

  name = 'byte'
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    data = text.encode('utf-8', errors='surrogateescape')
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    """The text; bytes that are not valid UTF-8 come back as U+FFFD."""
    return bytes(np.asarray(ids, dtype=np.uint8)).decode('utf-8', 'replace')


TOKENIZERS = {'byte': ByteTokenizer}


def make(
  name: str = 'byte', vocab_size: int | None = None, text: str | None = None
) -> Tokenizer:
  """The tokenizer ``name``; ``vocab_size`` None means its own size."""
  del text  # No tokenizer here learns from the corpus (yet).
  if name not in TOKENIZERS:
    raise UsageError(
      f'--tokenizer {name!r}: expected one of {sorted(TOKENIZERS)}'
    )
  tokenizer = TOKENIZERS[name]()
  if vocab_size is not None and vocab_size != tokenizer.vocab_size:
    raise UsageError(
      f'--vocab-size {vocab_size}: the {name} tokenizer has a fixed '
      f'vocabulary of {tokenizer.vocab_size}; drop --vocab-size'
    )
  return tokenizer
