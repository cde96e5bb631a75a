"""End-to-end tests of ``examples/train_lm.py``: tiny runs of a few steps.

Every run uses a small batch and sequence and a handful of steps, so the
whole file takes well under two minutes on two CPU cores; most of that is
XLA compiling the two presets, which ``train_lm`` caches per configuration.
"""

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import optax_adam_mini

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'examples' / 'train_lm.py'


def _load_train_lm():
  if 'train_lm' in sys.modules:
    return sys.modules['train_lm']
  spec = importlib.util.spec_from_file_location('train_lm', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules['train_lm'] = module
  spec.loader.exec_module(module)
  return module


train_lm = _load_train_lm()

# A few steps of a small batch; one device unless a test asks for a mesh.
FAST = [
  '--batch-size', '4',
  '--seq-len', '32',
  '--eval-batches', '1',
  '--eval-every', '1',
  '--mesh', 'data=1',
  '--no-progress',
]  # fmt: skip
METRIC_FIELDS = {
  'final_val_loss',
  'final_train_loss',
  'tokens_per_second',
  'optimizer_state_bytes',
  'steps',
  'history',
}


@pytest.fixture(scope='module')
def text_file(tmp_path_factory):
  """~40 KB of varied text (a slice of this repository's own sources)."""
  path = tmp_path_factory.mktemp('data') / 'corpus.txt'
  text = SCRIPT.read_text() + Path(__file__).read_text()
  path.write_text(text[:40_000])
  return path


def _read(path):
  with open(path) as f:
    return json.load(f)


def _assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_both_optimizers_llama(tmp_path):
  out = tmp_path / 'run'
  results = train_lm.main([*FAST, '--steps', '4', '--out', str(out)])
  assert set(results) == {'adam_mini', 'adamw'}
  metrics = {}
  for name in ('adam_mini', 'adamw'):
    m = metrics[name] = _read(out / name / 'metrics.json')
    assert METRIC_FIELDS <= set(m)
    assert m['steps'] == 4
    assert len(m['history']['train_loss']) == 4
    assert m['history']['val_step'] == [0, 1, 2, 3, 4]
    assert np.isfinite(m['final_val_loss']) and np.isfinite(
      m['final_train_loss']
    )
    assert m['tokens_per_second'] > 0
    assert 'standard library' in m['data']
  # Same initial model and data for both optimizers ...
  assert (
    metrics['adam_mini']['history']['val_loss'][0]
    == metrics['adamw']['history']['val_loss'][0]
  )
  assert (
    metrics['adam_mini']['history']['train_loss'][0]
    == metrics['adamw']['history']['train_loss'][0]
  )
  # ... and about half the optimizer state.
  ratio = (
    metrics['adam_mini']['optimizer_state_bytes']
    / metrics['adamw']['optimizer_state_bytes']
  )
  assert 0.45 < ratio < 0.6
  assert (out / 'loss.png').stat().st_size > 1000
  summary = _read(out / 'summary.json')
  assert summary['state_bytes_saved'] > 0
  assert not (out / 'metrics.json').exists()


def test_gpt2_single_optimizer(tmp_path, text_file, capsys):
  out = tmp_path / 'run'
  argv = [*FAST, '--preset', 'tiny-gpt2', '--optimizer', 'adam_mini', '--remat']
  train_lm.main(
    [*argv, '--steps', '4', '--data', str(text_file), '--out', str(out)]
  )
  m = _read(out / 'metrics.json')
  assert METRIC_FIELDS <= set(m)
  assert m['optimizer'] == 'adam_mini' and m['steps'] == 4
  assert (out / 'loss.png').exists()
  assert not (out / 'adam_mini').exists()
  printed = capsys.readouterr().out
  assert 'h/0/attn/c_attn/kernel' in printed  # the partition report


@pytest.mark.parametrize('preset', ['tiny', 'tiny-gpt2'])
def test_default_partition_recognises_every_weight(preset):
  mcfg = train_lm.PRESETS[preset].model
  _, params = train_lm.abstract_params(mcfg)
  with warnings.catch_warnings():  # the same messages are in report.warnings
    warnings.simplefilter('ignore')
    report = optax_adam_mini.partition_report(params, **mcfg.partition_kwargs())
  if preset == 'tiny':
    assert not report.warnings
  else:  # GPT-2 ties its output layer to the token embedding.
    assert report.warnings
    assert all('recognised as its output' in w for w in report.warnings)
  roles = {leaf.path: leaf.role.value for leaf in report.leaves}
  assert not [p for p, r in roles.items() if r in ('other', 'dense')], roles
  if preset == 'tiny':
    assert roles['layers/0/self_attn/q_proj/kernel'] == 'query'
    assert roles['layers/1/mlp/down_proj/kernel'] == 'mlp'
    assert roles['embed_tokens/embedding'] == 'embedding'
    assert roles['lm_head/kernel'] == 'output'
    assert roles['norm/weight'] == 'norm'
  else:
    assert roles['h/0/attn/c_attn/kernel'] == 'fused_qkv'
    assert roles['wpe/embedding'] == 'embedding'
    assert roles['h/1/ln_2/scale'] == 'norm'
    assert roles['h/1/mlp/c_fc/bias'] == 'bias'


def test_resume_is_bit_exact(tmp_path, text_file):
  common = [
    *FAST, '--optimizer', 'adam_mini', '--data', str(text_file),
    '--steps', '4', '--eval-every', '2',
  ]  # fmt: skip
  ckpt = tmp_path / 'interrupted'
  # Steps 1-2, "interrupted" after a checkpoint at step 2 ...
  ckpt_args = ['--checkpoint-every', '2', '--out', str(ckpt)]
  first = train_lm.main([*common, *ckpt_args, '--stop-after', '2'])
  assert first['adam_mini']['steps'] == 2
  assert _read(ckpt / 'metrics.json')['steps'] == 2
  # ... then resumed to step 4 in a new call ...
  resumed = train_lm.main([*common, *ckpt_args, '--resume'])['adam_mini']
  # ... equals four uninterrupted steps, bit for bit.
  straight = train_lm.main([*common, '--out', str(tmp_path / 'straight')])
  straight = straight['adam_mini']
  assert resumed['steps'] == straight['steps'] == 4
  assert resumed['history'] == straight['history']
  _assert_trees_equal(resumed['_params'], straight['_params'])
  _assert_trees_equal(resumed['_opt_state'], straight['_opt_state'])
  assert (
    _read(ckpt / 'metrics.json')['history']
    == _read(tmp_path / 'straight' / 'metrics.json')['history']
  )


def _expect_usage_error(argv, capsys, *needles):
  with pytest.raises(SystemExit) as exc:
    train_lm.main(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  for needle in needles:
    assert needle in err, err
  return err


def test_bad_arguments(tmp_path, capsys, text_file):
  out = ['--out', str(tmp_path / 'out')]
  _expect_usage_error(
    [*FAST, *out, '--data', str(tmp_path / 'missing.txt')],
    capsys,
    'missing.txt: no such file or directory',
  )
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  _expect_usage_error([*FAST, *out, '--data', str(empty)], capsys, 'empty')
  (tmp_path / 'empty_dir').mkdir()
  _expect_usage_error(
    [*FAST, *out, '--data', str(tmp_path / 'empty_dir')], capsys, 'no files'
  )
  short = tmp_path / 'short.txt'
  short.write_text('print("hello")\n' * 20)
  _expect_usage_error(
    [*FAST, *out, '--data', str(short), '--seq-len', '512'],
    capsys,
    '--seq-len 512 is longer than',
  )
  _expect_usage_error([*FAST, *out, '--preset', 'huge'], capsys, 'huge')
  _expect_usage_error([*FAST, *out, '--optimizer', 'sgd'], capsys, 'sgd')
  _expect_usage_error(
    [*FAST, *out, '--steps', '0'], capsys, '--steps must be >= 1'
  )
  _expect_usage_error(
    [*FAST, *out, '--mesh', 'data=2,pipeline=2'], capsys, '--mesh'
  )
  _expect_usage_error(
    [*FAST, *out, '--mesh', 'data=1000'], capsys, 'needs 1000 devices'
  )


def test_resume_guards(tmp_path, capsys, text_file):
  base = [
    *FAST, '--optimizer', 'adamw', '--data', str(text_file), '--steps', '4',
    '--checkpoint-every', '1', '--out', str(tmp_path / 'run'),
  ]  # fmt: skip
  train_lm.main(base)
  capsys.readouterr()
  # Fresh run into a folder with checkpoints: refuse rather than mix runs.
  _expect_usage_error(base, capsys, 'already holds checkpoints', '--resume')
  # Resuming with other hyper-parameters would not continue the same run.
  _expect_usage_error(
    [*base, '--resume', '--lr', '0.1'], capsys, 'different run', 'lr'
  )


def test_command_line_error_is_one_line(tmp_path):
  """The real CLI: a bad path exits with code 2 and one line, no traceback."""

  def error_line(*args):
    proc = subprocess.run(
      [sys.executable, str(SCRIPT), *args],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=tmp_path,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    return line

  line = error_line('--data', str(tmp_path / 'nope'))
  assert line.startswith('train_lm.py: error: --data') and 'nope' in line
  # argparse's own errors too.
  assert "invalid choice: 'huge'" in error_line('--preset', 'huge')


def test_sharded_mesh(tmp_path, text_file):
  """FSDP x tensor parallel = 2 x 2 on host CPU devices (see conftest.py)."""
  if len(jax.devices()) < 4:
    pytest.skip('needs the host CPU devices that tests/conftest.py sets up')
  argv = [
    *FAST, '--optimizer', 'adam_mini', '--data', str(text_file),
    '--steps', '4',
  ]  # fmt: skip
  sharded = train_lm.main(
    [*argv, '--mesh', 'data=1,fsdp=2,tp=2', '--out', str(tmp_path / 'a')]
  )['adam_mini']
  single = train_lm.main(
    [*argv, '--mesh', 'data=1', '--out', str(tmp_path / 'b')]
  )['adam_mini']
  kernel = sharded['_params']['layers'][0]['mlp']['up_proj']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tp')
  assert len(kernel.addressable_shards) == 4
  assert kernel.addressable_shards[0].data.shape == (64, 172)
  # Adam-mini's first moment is sharded like its weight.
  suffix = ('mu', 'layers', 0, 'mlp', 'up_proj', 'kernel')
  (mu,) = [
    leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(
      sharded['_opt_state']
    )[0]
    if train_lm._path_names(path)[-len(suffix) :] == suffix
  ]
  assert mu.sharding.spec == kernel.sharding.spec
  # Same model and data; the sums run in another order, in bfloat16.
  np.testing.assert_allclose(
    sharded['history']['train_loss'], single['history']['train_loss'], rtol=2e-2
  )
  assert sharded['mesh'] == {'data': 1, 'fsdp': 2, 'tp': 2}


def test_data_pipeline(tmp_path):
  tokens = np.arange(1000, dtype=np.int64).astype(np.uint8)
  a = train_lm.get_batch(tokens, 7, 4, 16, seed=3)
  b = train_lm.get_batch(tokens, 7, 4, 16, seed=3)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 17) and a.dtype == np.int32
  assert not np.array_equal(a, train_lm.get_batch(tokens, 8, 4, 16, seed=3))
  train, val = train_lm.split_train_val(tokens, 0.1)
  assert len(val) == 100 and np.array_equal(
    np.concatenate([train, val]), tokens
  )
  # A folder: every non-hidden text file, sorted, binary files skipped.
  (tmp_path / 'b.txt').write_text('second ')
  (tmp_path / 'a.txt').write_text('first ')
  (tmp_path / '.hidden').write_text('nope ')
  (tmp_path / 'blob.bin').write_bytes(b'\0\1\2')
  data, desc = train_lm.load_corpus(str(tmp_path))
  assert bytes(data) == b'first second '
  # The built-in corpus: the standard library, deterministic, capped.
  data, desc = train_lm.load_corpus(None, max_bytes=10_000)
  assert len(data) == 10_000 and os.path.dirname(os.__file__) in desc
  assert bytes(data) == bytes(train_lm.load_corpus(None, max_bytes=10_000)[0])
