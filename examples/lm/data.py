"""The corpus and its batches; nothing is ever downloaded.

``load`` reads a text file, a folder of text files, or, by default, the
local Python installation's standard library sources, tokenizes it and holds
out its last part for validation. Batches are stateless: the batch of step
``s`` is a pure function of ``(seed, s)`` (``get_batch``), so a resumed run
sees exactly the batches an uninterrupted one would, without checkpointing an
iterator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from examples.lm import tokenizer as tokenizer_lib
from examples.lm.config import DataConfig, UsageError

DEFAULT_CORPUS_MAX_BYTES = 4_000_000


class Corpus(NamedTuple):
  """Tokenized text, split into training and validation parts."""

  train_tokens: np.ndarray  # int32
  val_tokens: np.ndarray  # int32
  description: str
  tokenizer: tokenizer_lib.Tokenizer


def stdlib_files() -> list[str]:
  """The Python standard library's ``*.py`` files, in a deterministic order."""
  root = os.path.dirname(os.__file__)
  skip = {'site-packages', 'dist-packages', '__pycache__'}
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(
      d for d in dirnames if d not in skip and not d.startswith('.')
    )
    out.extend(
      os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith('.py')
    )
  return out


def _folder_files(folder: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out.extend(
      os.path.join(dirpath, f)
      for f in sorted(filenames)
      if not f.startswith('.')
    )
  return out


def _read_files(files: Iterable[str], max_bytes: int | None) -> bytes:
  chunks, total = [], 0
  for path in files:
    with open(path, 'rb') as f:
      data = f.read()
    if b'\0' in data[:4096]:  # a binary file in a folder of text
      continue
    chunks.append(data)
    total += len(data)
    if max_bytes is not None and total >= max_bytes:
      break
  data = b''.join(chunks)
  return data[:max_bytes] if max_bytes is not None else data


def read_text(
  path: str | None = None, max_bytes: int | None = None
) -> tuple[str, str]:
  """The corpus as text, and where it came from.

  ``path`` is a text file or a folder (every non-hidden, non-binary file,
  recursively, in sorted order). ``None`` reads the standard library's
  sources, capped at ``max_bytes`` (default 4,000,000).
  """
  if path is None:
    cap = DEFAULT_CORPUS_MAX_BYTES if max_bytes is None else max_bytes
    data = _read_files(stdlib_files(), cap)
    version = sys.version.split()[0]
    where = os.path.dirname(os.__file__)
    description = f'Python {version} standard library sources ({where})'
  else:
    if not os.path.exists(path):
      raise UsageError(f'--data {path}: no such file or directory')
    files = _folder_files(path) if os.path.isdir(path) else [path]
    if not files:
      raise UsageError(f'--data {path}: folder has no files')
    data = _read_files(files, max_bytes)
    plural = 's' if len(files) != 1 else ''
    description = f'{path} ({len(files)} file{plural})'
  if not data:
    raise UsageError(f'--data {path}: no text found (empty)')
  return data.decode('utf-8', errors='surrogateescape'), description


def split_train_val(
  tokens: np.ndarray, val_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
  """Holds out the last ``val_fraction`` of the tokens for validation."""
  n_val = max(1, int(round(len(tokens) * val_fraction)))
  return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def load(cfg: DataConfig | None = None) -> Corpus:
  """Reads, tokenizes and splits the corpus ``cfg`` names (default: stdlib)."""
  cfg = DataConfig() if cfg is None else cfg
  text, description = read_text(cfg.path, cfg.max_bytes)
  tokenizer = tokenizer_lib.make(cfg.tokenizer, cfg.vocab_size, text)
  tokens = tokenizer.encode(text)
  train_tokens, val_tokens = split_train_val(tokens, cfg.val_fraction)
  return Corpus(train_tokens, val_tokens, description, tokenizer)


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
