"""The trainer's data: the BPE tokenizer and the reader of folders of text.

The tokenizer is trained on small texts made here; what must hold is what
a tokenizer promises (ids decode back to the text, learned merges shorten
it, a cached file is reused rather than trained again) and what the reader
promises (its filter, its byte cap, whole held-out files that the tokenizer
never saw).
"""

import os

import numpy as np
import pytest

from examples.lm import config, data, tokenizer

CODE = '\n'.join(
  f'def function_{i}(value):\n  return value * {i} + len("text {i}")\n'
  for i in range(200)
)


def test_bpe_round_trips_and_compresses():
  tok = tokenizer.make('bpe', 400, CODE)
  assert tok.name == 'bpe' and 256 < tok.vocab_size <= 400
  ids = tok.encode(CODE)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert ids.min() >= 0 and ids.max() < tok.vocab_size
  # Learned merges: far fewer ids than bytes on text like the training text.
  assert len(ids) < len(CODE.encode()) / 2
  # Byte level: any text round-trips, even characters never seen in training.
  for text in (CODE[:500], 'naïve café — 日本語 ✓', '\t\t  mixed   spaces\n\n'):
    assert tok.decode(tok.encode(text)) == text
  # Bytes that are not UTF-8 (surrogate escapes from files) still encode.
  broken = b'ok \xff\xfe ok'.decode('utf-8', 'surrogateescape')
  assert tok.decode(tok.encode(broken)) == 'ok \ufffd\ufffd ok'
  # Documents encode one after the other, as the text they make.
  docs = [CODE[:300], CODE[300:700]]
  np.testing.assert_array_equal(
    tok.encode_documents(docs),
    np.concatenate([tok.encode(d) for d in docs]),
  )


def test_bpe_cache_is_reused_and_keyed_by_text_and_size(tmp_path, monkeypatch):
  first = tokenizer.make('bpe', 400, [CODE], cache_dir=str(tmp_path))
  (saved,) = os.listdir(tmp_path)
  assert saved.startswith('bpe_400_') and saved.endswith('.json')
  assert first.path == str(tmp_path / saved)

  def no_training(*args, **kwargs):
    raise AssertionError('trained again instead of loading the cache')

  with monkeypatch.context() as patch:
    patch.setattr(tokenizer.BPETokenizer, 'train', no_training)
    again = tokenizer.make('bpe', 400, [CODE], cache_dir=str(tmp_path))
  assert again.source == again.path == str(tmp_path / saved)
  assert again.fingerprint() == first.fingerprint()
  np.testing.assert_array_equal(again.encode(CODE), first.encode(CODE))
  # Another size or other text is another tokenizer.
  tokenizer.make('bpe', 300, [CODE], cache_dir=str(tmp_path))
  tokenizer.make('bpe', 400, [CODE + 'x = 1\n'], cache_dir=str(tmp_path))
  assert len(os.listdir(tmp_path)) == 3


def test_tokenizer_errors():
  with pytest.raises(config.UsageError, match='more than the 256'):
    tokenizer.make('bpe', 256, CODE)
  with pytest.raises(config.UsageError, match='needs text'):
    tokenizer.make('bpe', 400, None)
  with pytest.raises(config.UsageError, match='expected one of'):
    tokenizer.make('wordpiece')
  with pytest.raises(config.UsageError, match='--tokenizer'):
    config.DataConfig(tokenizer='wordpiece')
  with pytest.raises(config.UsageError, match='--file-types'):
    config.DataConfig(file_types=' , ')


def _tree(root, files):
  for name, content in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content)


def test_folder_reader_filters_caps_and_orders(tmp_path):
  _tree(
    tmp_path,
    {
      'pkg/a.py': 'a = 1\n',
      'pkg/README.md': '# readme\n',
      'pkg/notes.txt': 'notes\n',
      'pkg/blob.bin': b'\0\1\2\3',
      'pkg/__pycache__/a.cpython.py': 'cached = 1\n',
      '.hidden/h.py': 'hidden = 1\n',
      'other/b.rst': 'Title\n=====\n',
      **{f'many/f{i:02d}.py': f'x{i} = {i}\n' for i in range(20)},
    },
  )
  names = lambda docs: sorted(d.name for d in docs)
  docs, description = data.read_documents(str(tmp_path), suffixes=('.py',))
  assert names(docs) == sorted(
    ['pkg/a.py', *(f'many/f{i:02d}.py' for i in range(20))]
  )
  assert '21 of 21 .py files' in description
  docs, _ = data.read_documents(str(tmp_path), suffixes=('.md', '.rst'))
  assert names(docs) == ['other/b.rst', 'pkg/README.md']
  # No filter: every text file; binary, hidden and __pycache__ files left out.
  everything, _ = data.read_documents(str(tmp_path))
  assert len(everything) == 24
  assert {'pkg/blob.bin', 'pkg/__pycache__/a.cpython.py'}.isdisjoint(
    d.name for d in everything
  )
  # Not alphabetical: an order fixed by the paths, the same every time.
  order = [d.name for d in everything]
  assert order != sorted(order)
  assert order == [d.name for d in data.read_documents(str(tmp_path))[0]]
  # The cap: exactly that many bytes, the first documents of the same order.
  capped, _ = data.read_documents(str(tmp_path), max_bytes=40)
  assert sum(d.size for d in capped) == 40
  assert [d.name for d in capped] == order[: len(capped)]
  assert capped[-1].text == everything[len(capped) - 1].text[: capped[-1].size]
  # Several folders (and files) joined by ':'.
  both = f'{tmp_path / "pkg"}{os.pathsep}{tmp_path / "other" / "b.rst"}'
  docs, _ = data.read_documents(both, suffixes=('.py', '.rst'))
  assert names(docs) == ['a.py', 'b.rst']
  with pytest.raises(config.UsageError, match='no such file'):
    data.read_documents(str(tmp_path / 'missing'))
  with pytest.raises(config.UsageError, match='no files'):
    data.read_documents(str(tmp_path / 'pkg'), suffixes=('.ipynb',))


def test_held_out_files_are_whole_and_unseen_by_the_tokenizer(tmp_path):
  # Training files repeat one made-up word, validation files another.
  seen, unseen = 'trainonlyword', 'heldoutword'
  files = {
    f't{i:02d}.txt': f'{seen} ' * 40 + CODE[: 400 + i] for i in range(30)
  }
  _tree(tmp_path, files)
  docs, _ = data.read_documents(str(tmp_path))
  train_docs, val_docs = data.split_documents(docs, 0.1)
  # Whole files, the last ones read, at least a tenth of the bytes.
  assert train_docs + val_docs == docs
  held = sum(d.size for d in val_docs)
  assert held >= 0.1 * sum(d.size for d in docs) > held - val_docs[0].size
  # Make the held-out files say the other word, and build the corpus.
  for d in val_docs:
    (tmp_path / d.name).write_text(f'{unseen} ' * 40 + CODE[:400])
  cfg = config.DataConfig(
    path=str(tmp_path), val_fraction=0.1, tokenizer='bpe', vocab_size=400
  )
  corpus = data.load(cfg)
  tok = corpus.tokenizer
  assert len(tok.encode(seen)) == 1  # merged: the tokenizer saw it
  assert len(tok.encode(unseen)) > 3  # never seen: only byte-level pieces
  assert corpus.details['val_documents'] == len(val_docs)
  val_text = tok.decode(corpus.val_tokens)
  assert unseen in val_text and seen not in val_text
  assert unseen not in tok.decode(corpus.train_tokens)


def test_single_file_is_cut_and_token_ids_are_cached(tmp_path, monkeypatch):
  path = tmp_path / 'one.txt'
  path.write_text(CODE)
  docs, _ = data.read_documents(str(path))
  train_docs, val_docs = data.split_documents(docs, 0.25)
  assert train_docs[0].text + val_docs[0].text == CODE
  assert len(val_docs[0].text) == round(0.25 * len(CODE))
  cfg = config.DataConfig(
    path=str(path), val_fraction=0.25, tokenizer='bpe', vocab_size=300
  )
  cache = str(tmp_path / 'cache')
  first = data.load(cfg, cache_dir=cache)
  assert sorted(f.split('_')[0] for f in os.listdir(cache)) == ['bpe', 'tokens']
  with monkeypatch.context() as patch:
    patch.setattr(
      tokenizer.BPETokenizer,
      'encode_documents',
      lambda *a: pytest.fail('encoded again instead of loading the cache'),
    )
    again = data.load(cfg, cache_dir=cache)
  for a, b in zip(first[:2], again[:2]):
    assert b.dtype == np.int32
    np.testing.assert_array_equal(a, b)
  assert first.tokenizer.decode(first.train_tokens) == train_docs[0].text
