"""Text to token ids and back: bytes, or a byte-level BPE trained here.

A tokenizer is anything with the ``Tokenizer`` interface: a ``name``, a
``vocab_size``, ``encode(text) -> np.ndarray`` of int32 ids and
``decode(ids) -> str``. ``make(name, vocab_size, text, cache_dir=...)``
builds one by name; ``text`` is what a learned tokenizer trains on (a string
or a list of documents), which ``data.load`` makes the training split only,
so the validation text stays unseen.

* ``byte``: one id per byte, vocabulary 256, nothing to learn. Text read from
  files keeps bytes that are not UTF-8 as surrogate escapes
  (``errors='surrogateescape'``), so its ids are exactly the file's bytes.
* ``bpe``: byte-level BPE (GPT-2's pre-tokenization: words, numbers,
  punctuation and runs of spaces are split first, then merged from bytes up
  to ``vocab_size`` ids), trained locally with Hugging Face ``tokenizers``;
  nothing is downloaded. Every byte has an id, so any text encodes; bytes
  that are not UTF-8 are read as U+FFFD first. With ``cache_dir`` the trained
  tokenizer is saved there as ``bpe_<vocab>_<key>.json``, ``key`` being a
  hash of the vocabulary size and the training text, and a later call with
  the same text and size loads it instead of training again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from examples.lm.config import TOKENIZERS, UsageError

DEFAULT_BPE_VOCAB = 16384
# Bumped whenever the BPE's settings change, so a cached file of the old
# settings is never taken for the new.
_BPE_VERSION = 'bytelevel-bpe-1'
# Documents passed to the tokenizer's parallel encoder at once.
_ENCODE_BATCH = 512


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
  description = 'byte (256 ids)'

  def encode(self, text: str) -> np.ndarray:
    data = text.encode('utf-8', errors='surrogateescape')
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

  def encode_documents(self, documents: Sequence[str]) -> np.ndarray:
    """The ids of the documents one after the other."""
    return self.encode(''.join(documents))

  def decode(self, ids) -> str:
    """The text; bytes that are not valid UTF-8 come back as U+FFFD."""
    return bytes(np.asarray(ids, dtype=np.uint8)).decode('utf-8', 'replace')


def _hf():
  try:
    import tokenizers
  except ModuleNotFoundError:
    raise UsageError(
      '--tokenizer bpe needs Hugging Face tokenizers: pip install -e '
      "'.[examples]' (or pip install tokenizers)"
    ) from None
  return tokenizers


def _valid_utf8(text: str) -> str:
  """``text`` with its surrogate escapes (non-UTF-8 bytes) read as U+FFFD."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    return text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')
  return text


class BPETokenizer:
  """Byte-level BPE: a trained Hugging Face ``tokenizers.Tokenizer``.

  Build it with ``make('bpe', vocab_size, text)`` or ``BPETokenizer.train``;
  ``source`` says where it came from (``'trained'`` or the cache file) and
  ``path`` is its file, if it has one.

  >>> tok = BPETokenizer.train(['def f(x):\\n  return x\\n'] * 50, 300)
  >>> tok.decode(tok.encode('def g(y):\\n  return y'))
  'def g(y):\\n  return y'
  >>> text = 'def f(x):\\n  return x\\n'
  >>> len(tok.encode(text)) < len(text) / 2  # 9 tokens for 22 bytes
  True
  """

  name = 'bpe'

  def __init__(self, hf_tokenizer, source: str = 'trained', path=None):
    self._tok = hf_tokenizer
    self.vocab_size = int(hf_tokenizer.get_vocab_size())
    self.source = source
    self.path = path  # the file it was loaded from or saved to, if any

  @property
  def description(self) -> str:
    return f'bpe ({self.vocab_size:,} ids, {self.source})'

  @classmethod
  def train(cls, documents: Iterable[str], vocab_size: int) -> BPETokenizer:
    """A BPE of at most ``vocab_size`` ids learned from ``documents``.

    Fewer ids where the text has fewer distinct merges to make.
    """
    hf = _hf()
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
      vocab_size=vocab_size,
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
      special_tokens=[],
      show_progress=False,
    )
    tok.train_from_iterator(
      (_valid_utf8(d) for d in documents), trainer=trainer
    )
    return cls(tok)

  @classmethod
  def load(cls, path: str) -> BPETokenizer:
    return cls(_hf().Tokenizer.from_file(path), source=path, path=path)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    partial = f'{path}.{os.getpid()}.tmp'
    self._tok.save(partial)
    os.replace(partial, path)  # a reader never sees half a file

  def fingerprint(self) -> str:
    """A hash of the whole tokenizer (its vocabulary and merges)."""
    return hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

  def encode(self, text: str) -> np.ndarray:
    ids = self._tok.encode(_valid_utf8(text)).ids
    return np.asarray(ids, dtype=np.int32)

  def encode_documents(self, documents: Sequence[str]) -> np.ndarray:
    """The ids of the documents one after the other, encoded in parallel."""
    parts = [np.zeros(0, np.int32)]
    for start in range(0, len(documents), _ENCODE_BATCH):
      batch = [_valid_utf8(d) for d in documents[start : start + _ENCODE_BATCH]]
      for encoding in self._tok.encode_batch_fast(batch):
        parts.append(np.asarray(encoding.ids, dtype=np.int32))
    return np.concatenate(parts)

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def cache_key(vocab_size: int, documents: Sequence[str]) -> str:
  """The hash that names a BPE's cache file: its settings and its text."""
  digest = hashlib.sha256(f'{_BPE_VERSION} {vocab_size}'.encode())
  for document in documents:
    data = document.encode('utf-8', 'surrogateescape')
    digest.update(len(data).to_bytes(8, 'little'))
    digest.update(data)
  return digest.hexdigest()[:16]


def make(
  name: str = 'byte',
  vocab_size: int | None = None,
  text: str | Sequence[str] | None = None,
  *,
  cache_dir: str | None = None,
) -> Tokenizer:
  """The tokenizer ``name``; ``vocab_size`` None means its default size.

  Args:
    name: ``'byte'`` or ``'bpe'``.
    vocab_size: the vocabulary (byte: 256 only; bpe: default 16384).
    text: what a BPE trains on, a string or a list of documents.
    cache_dir: where a BPE is saved, and found again (see the module doc);
      ``None`` trains it every time.
  """
  if name not in TOKENIZERS:
    raise UsageError(f'--tokenizer {name!r}: expected one of {TOKENIZERS}')
  if name == 'byte':
    if vocab_size is not None and vocab_size != ByteTokenizer.vocab_size:
      raise UsageError(
        f'--vocab-size {vocab_size}: the byte tokenizer has a fixed '
        'vocabulary of 256; drop --vocab-size'
      )
    return ByteTokenizer()
  vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
  if vocab_size <= 256:
    raise UsageError(
      f'--vocab-size {vocab_size}: a byte-level BPE needs more than the 256 '
      'byte ids; use --tokenizer byte for 256'
    )
  if not text:
    raise UsageError('--tokenizer bpe needs text to train on')
  documents = [text] if isinstance(text, str) else list(text)
  path = None
  if cache_dir is not None:
    key = cache_key(vocab_size, documents)
    path = os.path.join(cache_dir, f'bpe_{vocab_size}_{key}.json')
    if os.path.exists(path):
      return BPETokenizer.load(path)
  tokenizer = BPETokenizer.train(documents, vocab_size)
  if path is not None:
    tokenizer.save(path)
    tokenizer.source, tokenizer.path = f'trained, saved to {path}', path
  return tokenizer
