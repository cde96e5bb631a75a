"""The corpus and its batches; nothing is ever downloaded.

``load`` reads documents -- a text file, a folder, or several joined by
``':'``, filtered by file type and capped in bytes; by default the local
Python installation's standard library sources -- holds out whole documents
for validation, trains the tokenizer (where it learns) on the training
documents alone, and tokenizes both splits. So the validation text is text
that neither the model nor the tokenizer saw.

A folder's files are read in an order fixed by a hash of their paths, not
alphabetically: a byte cap then takes a sample of the whole folder (every
package of a ``site-packages``, not those whose names come first), and the
held-out documents, the last ones read, are spread over it too.

Batches are stateless: the batch of step ``s`` is a pure function of
``(seed, s)`` (``get_batch``), so a resumed run sees exactly the batches an
uninterrupted one would, without checkpointing an iterator.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from examples.lm import tokenizer as tokenizer_lib
from examples.lm.config import DataConfig, UsageError

DEFAULT_CORPUS_MAX_BYTES = 4_000_000
STDLIB_FILE_TYPES = ('.py',)
_SKIP_DIRS = {'__pycache__'}


class Corpus(NamedTuple):
  """Tokenized text, split into training and validation parts."""

  train_tokens: np.ndarray  # int32
  val_tokens: np.ndarray  # int32
  description: str
  tokenizer: tokenizer_lib.Tokenizer
  # Sizes of the splits and where the tokenizer came from (plain JSON).
  details: dict | None = None


class Document(NamedTuple):
  name: str  # the path, relative to the folder it was found in
  text: str
  size: int  # bytes in the file (after the cap)


def list_files(
  root: str, suffixes: Sequence[str] | None = None, skip=frozenset()
) -> list[str]:
  """Every non-hidden file under ``root`` ending in one of ``suffixes``.

  In sorted order, ``__pycache__`` and folders named in ``skip`` left out;
  ``suffixes`` ``None`` takes every file.
  """
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(
      d
      for d in dirnames
      if d not in _SKIP_DIRS and d not in skip and not d.startswith('.')
    )
    out.extend(
      os.path.join(dirpath, f)
      for f in sorted(filenames)
      if not f.startswith('.')
      and (suffixes is None or f.endswith(tuple(suffixes)))
    )
  return out


def stdlib_root() -> str:
  return os.path.dirname(os.__file__)


def stdlib_files(suffixes: Sequence[str] = STDLIB_FILE_TYPES) -> list[str]:
  """The Python standard library's ``*.py`` files, in sorted order."""
  skip = {'site-packages', 'dist-packages'}
  return list_files(stdlib_root(), suffixes, skip)


def _hash_order(paths: list[str], root: str) -> list[str]:
  """``paths`` in an order fixed by a hash of each path below ``root``."""

  def key(path):
    name = os.path.relpath(path, root).encode('utf-8', 'surrogateescape')
    return hashlib.blake2b(name, digest_size=8).digest(), path

  return sorted(paths, key=key)


def _read(files: list[tuple[str, str]], max_bytes: int | None):
  """Documents from ``(path, name)`` pairs, in order, up to ``max_bytes``.

  Files with a NUL byte at their start (binary files in a folder of text)
  are skipped; the last file read is cut at the cap.
  """
  documents, total = [], 0
  for path, name in files:
    if max_bytes is not None and total >= max_bytes:
      break
    with open(path, 'rb') as f:
      data = f.read()
    if not data or b'\0' in data[:4096]:
      continue
    if max_bytes is not None:
      data = data[: max_bytes - total]
    text = data.decode('utf-8', errors='surrogateescape')
    documents.append(Document(name, text, len(data)))
    total += len(data)
  return documents


def read_documents(
  path: str | None = None,
  max_bytes: int | None = None,
  suffixes: Sequence[str] | None = None,
) -> tuple[list[Document], str]:
  """The corpus as documents, in reading order, and where it came from.

  ``path`` is a text file, a folder (every non-hidden, non-binary file
  ending in one of ``suffixes``, recursively), or several of these joined by
  ``':'``. ``None`` reads the standard library's ``.py`` sources, capped at
  ``max_bytes`` (default 4,000,000). A folder's files are read in the order
  of a hash of their paths (see the module doc).
  """
  if path is None:
    root = stdlib_root()
    suffixes = STDLIB_FILE_TYPES if suffixes is None else tuple(suffixes)
    cap = DEFAULT_CORPUS_MAX_BYTES if max_bytes is None else max_bytes
    files = _hash_order(stdlib_files(suffixes), root)
    documents = _read([(f, os.path.relpath(f, root)) for f in files], cap)
    version = sys.version.split()[0]
    where = f'Python {version} standard library sources ({root})'
    return documents, _describe(where, documents, len(files), suffixes)
  found = []
  for root in path.split(os.pathsep):
    if not os.path.exists(root):
      raise UsageError(f'--data {root}: no such file or directory')
    if os.path.isdir(root):
      files = _hash_order(list_files(root, suffixes), root)
      found += [(f, os.path.relpath(f, root)) for f in files]
    else:
      found.append((root, os.path.basename(root)))
  if not found:
    raise UsageError(f'--data {path}: folder has no files')
  documents = _read(found, max_bytes)
  if not documents:
    raise UsageError(f'--data {path}: no text found (empty)')
  return documents, _describe(path, documents, len(found), suffixes)


def _describe(where, documents, n_files, suffixes) -> str:
  if n_files == 1:
    return where
  kinds = f' {",".join(suffixes)}' if suffixes else ''
  return f'{where} ({len(documents):,} of {n_files:,}{kinds} files)'


def read_text(
  path: str | None = None,
  max_bytes: int | None = None,
  suffixes: Sequence[str] | None = None,
) -> tuple[str, str]:
  """The documents of ``read_documents``, joined, and their description."""
  documents, description = read_documents(path, max_bytes, suffixes)
  return ''.join(d.text for d in documents), description


def split_documents(
  documents: list[Document], val_fraction: float = 0.05
) -> tuple[list[Document], list[Document]]:
  """Holds out the last documents read, ``val_fraction`` of the bytes.

  Whole documents, as few as reach the fraction; where that would leave no
  training document (a single file), the text is cut instead and its last
  ``val_fraction`` held out.
  """
  total = sum(d.size for d in documents)
  held, n_val = 0, 0
  while held < val_fraction * total and n_val < len(documents):
    n_val += 1
    held += documents[-n_val].size
  if n_val < len(documents):
    return documents[: len(documents) - n_val], documents[-n_val:]
  text = ''.join(d.text for d in documents)
  cut = len(text) - max(1, int(round(len(text) * val_fraction)))
  name = documents[0].name if len(documents) == 1 else 'corpus'

  def part(piece, suffix):
    size = len(piece.encode('utf-8', 'surrogateescape'))
    return Document(f'{name}{suffix}', piece, size)

  return [part(text[:cut], '[:cut]')], [part(text[cut:], '[cut:]')]


def _tokenizer_sample(documents: list[Document], max_bytes: int) -> list[str]:
  """The first training documents, about ``max_bytes`` of them (for a BPE)."""
  sample, total = [], 0
  for document in documents:
    if total >= max_bytes:
      break
    sample.append(document.text[: max_bytes - total])
    total += min(document.size, max_bytes - total)
  return sample


def _encode_cached(tokenizer, train, val, cache_dir):
  """Both splits' ids; with ``cache_dir``, kept there for the next run."""
  if cache_dir is None or tokenizer.name == 'byte':  # bytes cost nothing
    return (
      tokenizer.encode_documents([d.text for d in train]),
      tokenizer.encode_documents([d.text for d in val]),
    )
  digest = hashlib.sha256(tokenizer.fingerprint().encode())
  for split in (train, val):
    digest.update(tokenizer_lib.cache_key(0, [d.text for d in split]).encode())
  path = os.path.join(cache_dir, f'tokens_{digest.hexdigest()[:16]}.npz')
  if os.path.exists(path):
    with np.load(path) as saved:
      return saved['train'].astype(np.int32), saved['val'].astype(np.int32)
  out = [tokenizer.encode_documents([d.text for d in s]) for s in (train, val)]
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  os.makedirs(cache_dir, exist_ok=True)
  partial = f'{path}.{os.getpid()}.tmp.npz'
  np.savez(partial, train=out[0].astype(dtype), val=out[1].astype(dtype))
  os.replace(partial, path)
  return out[0], out[1]


def load(cfg: DataConfig | None = None, cache_dir: str | None = None) -> Corpus:
  """Reads, splits and tokenizes the corpus ``cfg`` names (default: stdlib).

  With ``cache_dir``, a BPE tokenizer and the ids it gives are saved there,
  keyed by the text and the vocabulary size, and reused by the next run on
  the same data.
  """
  cfg = DataConfig() if cfg is None else cfg
  documents, description = read_documents(
    cfg.path, cfg.max_bytes, cfg.suffixes()
  )
  train, val = split_documents(documents, cfg.val_fraction)
  sample = None
  if cfg.tokenizer != 'byte':
    sample = _tokenizer_sample(train, cfg.tokenizer_train_bytes)
  tokenizer = tokenizer_lib.make(
    cfg.tokenizer, cfg.vocab_size, sample, cache_dir=cache_dir
  )
  train_tokens, val_tokens = _encode_cached(tokenizer, train, val, cache_dir)
  details = {
    'documents': len(documents),
    'train_documents': len(train),
    'val_documents': len(val),
    'train_bytes': sum(d.size for d in train),
    'val_bytes': sum(d.size for d in val),
    'train_tokens': int(len(train_tokens)),
    'val_tokens': int(len(val_tokens)),
    'tokenizer': tokenizer.description,
  }
  if sample is not None:
    details['tokenizer_train_bytes'] = sum(
      len(t.encode('utf-8', 'surrogateescape')) for t in sample
    )
  return Corpus(train_tokens, val_tokens, description, tokenizer, details)


def check_seq_len(corpus: Corpus, seq_len: int) -> None:
  """Refuses a sequence that does not fit in either split."""
  for name, tokens in (
    ('training', corpus.train_tokens),
    ('validation', corpus.val_tokens),
  ):
    if len(tokens) < seq_len + 1:
      raise UsageError(
        f'--seq-len {seq_len} is longer than the {name} split '
        f'({len(tokens)} tokens); use a shorter --seq-len or more data'
      )


def get_batch(
  tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int
) -> np.ndarray:
  """The training batch of ``step``: windows of ``seq_len + 1`` tokens.

  A pure function of ``(seed, step)``; shape ``(batch_size, seq_len + 1)``,
  int32. Every window start in ``[0, len(tokens) - seq_len - 1]`` is equally
  likely.
  """
  rng = np.random.default_rng([seed, step])
  starts_B = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  windows_BxT = starts_B[:, None] + np.arange(seq_len + 1)
  return tokens[windows_BxT].astype(np.int32)


def val_batches(
  tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int
) -> np.ndarray:
  """Fixed, evenly spaced validation windows: ``(n_batches, B, T + 1)``."""
  n = n_batches * batch_size
  starts = np.linspace(0, len(tokens) - seq_len - 1, n).round().astype(np.int64)
  windows = tokens[starts[:, None] + np.arange(seq_len + 1)]
  return windows.astype(np.int32).reshape(n_batches, batch_size, -1)
