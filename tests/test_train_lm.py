"""Tests of the example trainer, ``examples/lm`` and its CLI ``train_lm.py``.

Runs are a few steps of a small batch and sequence. Most of the time is XLA
compiling a train step, which ``step.compile_run`` caches per configuration,
so the runs share one configuration where they can (the ``FAST`` flags, ten
steps: the schedule is part of the compiled step). The CLI runs in this process (``train_lm.main``); one test
starts it as a real command.
"""

import dataclasses
import doctest
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import examples.lm
import optax_adam_mini
from examples import train_lm
from examples.lm import (
  config,
  data,
  model,
  optimizer,
  presets,
  tokenizer,
  train,
)
from optax_adam_mini.partition import path_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'examples' / 'train_lm.py'

# Ten steps of a small batch; one device unless a test asks for a mesh.
FAST = [
  '--steps', '10',
  '--batch-size', '4',
  '--seq-len', '32',
  '--eval-batches', '1',
  '--eval-every', '5',
  '--mesh', 'data=1',
  '--no-progress',
]  # fmt: skip
# The same, as from_preset settings.
FAST_SETTINGS = dict(
  steps=10, batch_size=4, seq_len=32, eval_batches=1, eval_every=5
)
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
  text = (ROOT / 'examples' / 'lm' / 'model.py').read_text()
  text += Path(__file__).read_text()
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


def _assert_plain_json(value, where='metrics'):
  """Only JSON's own types: no arrays, no NumPy scalars."""
  if isinstance(value, dict):
    for k, v in value.items():
      assert isinstance(k, str), where
      _assert_plain_json(v, f'{where}.{k}')
  elif isinstance(value, list):
    for i, v in enumerate(value):
      _assert_plain_json(v, f'{where}[{i}]')
  else:
    assert value is None or type(value) in (bool, int, float, str), (
      where,
      type(value),
    )


def _expect_usage_error(argv, capsys, *needles, code=2):
  with pytest.raises(SystemExit) as exc:
    train_lm.main(argv)
  assert exc.value.code == code
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  (line,) = err.strip().splitlines()  # one line
  for needle in needles:
    assert needle in line, line
  return line


def test_both_optimizers_llama(tmp_path, capsys):
  out = tmp_path / 'run'
  results = train_lm.main([*FAST, '--out', str(out)])
  printed = capsys.readouterr().out
  assert set(results) == {'adam_mini', 'adamw'}
  metrics = {}
  for name in ('adam_mini', 'adamw'):
    m = metrics[name] = _read(out / name / 'metrics.json')
    assert METRIC_FIELDS <= set(m)
    assert m['steps'] == 10 and not m['stopped_early']
    assert len(m['history']['train_loss']) == 10
    assert m['history']['val_step'] == [0, 5, 10]
    assert np.isfinite(m['final_val_loss'])
    assert np.isfinite(m['final_train_loss'])
    assert m['tokens_per_second'] > 0
    assert 'standard library' in m['data']
    # The returned metrics are what the file holds: plain JSON, no arrays.
    _assert_plain_json(results[name].metrics)
    assert results[name].metrics['history'] == m['history']
  # Same initial model and data for both optimizers ...
  for key in ('val_loss', 'train_loss'):
    assert (
      metrics['adam_mini']['history'][key][0]
      == metrics['adamw']['history'][key][0]
    )
  # ... and about half the optimizer state.
  mini = metrics['adam_mini']['optimizer_state_bytes']
  adamw = metrics['adamw']['optimizer_state_bytes']
  assert 0.45 < mini / adamw < 0.6
  assert (out / 'loss.png').stat().st_size > 1000
  summary = _read(out / 'summary.json')
  assert summary['state_bytes_saved'] == adamw - mini > 0
  assert summary['optimizer_state_bytes'] == {'adam_mini': mini, 'adamw': adamw}
  assert not (out / 'metrics.json').exists()
  # The partition report and summary.json agree to the byte, and the sizes
  # printed are in MiB (2**20 bytes), nowhere in MB.
  assert f'optimizer state: {mini:,} bytes' in printed
  assert f'({adamw:,} bytes)' in printed
  assert f'optimizer state {mini / 2**20:.2f} MiB' in printed
  assert f'{adamw / 2**20:.2f} MiB' in printed
  assert not re.search(r'\bMB\b', printed)


def test_gpt2_single_optimizer_same_layout(tmp_path, text_file, capsys):
  out = tmp_path / 'run'
  argv = [*FAST, '--preset', 'tiny-gpt2', '--optimizer', 'adam_mini', '--remat']
  train_lm.main([*argv, '--data', str(text_file), '--out', str(out)])
  # One layout whatever --optimizer is: <out>/<optimizer>/metrics.json.
  m = _read(out / 'adam_mini' / 'metrics.json')
  assert METRIC_FIELDS <= set(m)
  assert m['optimizer'] == 'adam_mini' and m['steps'] == 10
  assert (out / 'loss.png').exists()
  assert set(_read(out / 'summary.json')['val_loss']) == {'adam_mini'}
  assert not (out / 'metrics.json').exists()
  printed = capsys.readouterr().out
  assert 'h/0/attn/c_attn/kernel' in printed  # the partition report


def test_int8_first_moment_run(tmp_path, capsys):
  out = tmp_path / 'run'
  argv = [*FAST, '--optimizer', 'adam_mini', '--mu-dtype', 'int8']
  results = train_lm.main([*argv, '--out', str(out)])
  printed = capsys.readouterr().out
  m = _read(out / 'adam_mini' / 'metrics.json')
  assert m['train_config']['opt']['mu_dtype'] == 'int8'
  assert _read(out / 'summary.json')['adam_mini_mu_dtype'] == 'int8'
  assert 'mu_dtype=int8' in printed
  history = m['history']
  assert np.isfinite(m['final_val_loss'])
  assert history['val_loss'][-1] < history['val_loss'][0]
  # The big leaves' m are int8 codes with float32 scales; small ones float32.
  (state,) = [
    s
    for s in jax.tree.leaves(
      results['adam_mini'].opt_state,
      is_leaf=lambda s: isinstance(s, optax_adam_mini.ScaleByAdamMiniState),
    )
    if isinstance(s, optax_adam_mini.ScaleByAdamMiniState)
  ]
  mu = {
    '/'.join(path_names(p)): x
    for p, x in jax.tree_util.tree_flatten_with_path(
      state.mu, is_leaf=lambda x: isinstance(x, optax_adam_mini.QuantizedArray)
    )[0]
  }
  up = mu['layers/0/mlp/up_proj/kernel']
  assert isinstance(up, optax_adam_mini.QuantizedArray)
  assert up.codes.dtype == np.int8 and up.scales.dtype == np.float32
  assert mu['norm/weight'].dtype == np.float32  # 128 < 4096 coordinates
  # One byte per parameter where it was four: about a quarter of float32 m's
  # state (v, the small leaves and the scales add a little).
  cfg, model_cfg = train_lm.configs_from_args(
    train_lm.build_parser().parse_args(argv)
  )[1::-1]
  params = model.abstract_params(model_cfg)
  float32_m = optimizer.state_bytes(
    dataclasses.replace(cfg.opt, mu_dtype='float32'), model_cfg, params
  )
  assert 0.25 < m['optimizer_state_bytes'] / float32_m < 0.3
  assert 'int8' in printed  # the partition report's m column


@pytest.mark.parametrize('preset', ['tiny', 'tiny-gpt2'])
def test_default_partition_recognises_every_weight(preset):
  model_cfg = presets.PRESETS[preset].model
  params = model.abstract_params(model_cfg)
  with warnings.catch_warnings():  # the same messages are in report.warnings
    warnings.simplefilter('ignore')
    report = optax_adam_mini.partition_report(
      params, **model_cfg.partition_kwargs()
    )
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


def test_stop_resume_and_extend(tmp_path, text_file, capsys, monkeypatch):
  """--stop-after says so; --resume continues bit-exactly; --resume --steps N
  extends a finished run, or fails before anything is built, naming the flags
  that make it the checkpoint's run again."""
  common = [*FAST, '--optimizer', 'adam_mini', '--data', str(text_file)]
  ckpt = [*common, '--checkpoint-every', '5', '--out', str(tmp_path / 'ckpt')]
  first = train_lm.main([*ckpt, '--stop-after', '5'])['adam_mini']
  assert first.metrics['stopped_early'] and first.metrics['steps'] == 5
  assert 'stopped early, after step 5 of 10' in capsys.readouterr().out
  resumed = train_lm.main([*ckpt, '--resume'])['adam_mini']
  assert resumed.metrics['steps'] == 10
  # Twenty steps would be another schedule (20 long, 2 warmup steps, not 10
  # and 1): refused before any model is built or compiled.
  with monkeypatch.context() as patch:
    for module, name in ((train, 'train'), (model, 'abstract_params')):
      patch.setattr(module, name, lambda *a, **k: pytest.fail('built'))
    line = _expect_usage_error(
      [*ckpt, '--steps', '20', '--resume'], capsys, 'different run'
    )
  assert '--schedule-steps 10' in line and '--warmup-steps 1' in line
  extend = ['--steps', '20', '--schedule-steps', '10', '--warmup-steps', '1']
  extended = train_lm.main([*ckpt, *extend, '--resume'])['adam_mini']
  # Equal, bit for bit, to twenty steps of the same schedule in one go.
  straight = train_lm.main([*common, *extend, '--out', str(tmp_path / 'one')])
  straight = straight['adam_mini']
  assert extended.metrics['steps'] == straight.metrics['steps'] == 20
  assert extended.metrics['history'] == straight.metrics['history']
  _assert_trees_equal(extended.params, straight.params)
  _assert_trees_equal(extended.opt_state, straight.opt_state)


def test_resume_guards(tmp_path, capsys, text_file):
  base = [
    *FAST, '--optimizer', 'adamw', '--data', str(text_file),
    '--checkpoint-every', '5', '--out', str(tmp_path / 'run'),
  ]  # fmt: skip
  train_lm.main(base)
  capsys.readouterr()
  # Fresh run into a folder with checkpoints: refuse rather than mix runs.
  _expect_usage_error(base, capsys, 'already holds checkpoints', '--resume')
  # Resuming with other hyper-parameters would not continue the same run.
  _expect_usage_error(
    [*base, '--resume', '--lr', '0.1'], capsys, 'different run', '--lr 0.003'
  )
  _expect_usage_error(
    [*base, '--resume', '--preset', 'tiny-gpt2'], capsys, 'same --preset'
  )


def test_bad_arguments(tmp_path, capsys):
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
  bad = {
    ('--preset', 'huge'): "invalid choice: 'huge'",
    ('--optimizer', 'sgd'): 'sgd',
    ('--partition', 'rows'): "--partition 'rows': expected one of default",
    ('--partition', 'adam:heads'): 'adam:ROLE[+ROLE...] with roles query',
    ('--tokenizer', 'wordpiece'): "invalid choice: 'wordpiece'",
    ('--tokenizer', 'bpe', '--vocab-size', '256'): 'more than the 256',
    ('--vocab-size', '512'): 'fixed vocabulary of 256',
    ('--steps', '0'): '--steps must be >= 1',
    ('--lr', '0'): '--lr must be > 0',
    ('--b2', '1.5'): '--b2 must be in [0, 1)',
    ('--mu-dtype', 'int2'): "invalid choice: 'int2'",
    ('--partition', 'whole', '--value-blocks', 'whole'): 'configures',
    ('--mesh', 'data=2,pipeline=2'): '--mesh',
    ('--mesh', 'data=1000'): 'needs 1000 devices',
    # 1024 learned positions: refused before the corpus is even read.
    ('--preset', 'tiny-gpt2', '--seq-len', '2048'): '1024 learned positions',
  }
  for flags, needle in bad.items():
    _expect_usage_error([*FAST, *out, *flags], capsys, needle)


def test_sequence_too_long_for_memory_is_refused_up_front(
  tmp_path, capsys, monkeypatch
):
  # The attention logits of one layer alone: B * H * T * T float32 bytes.
  need_gib = 4 * 4 * 100_000**2 * 4 / 2**30
  if (
    os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') > need_gib * 2**30
  ):
    pytest.skip('this machine has the memory for it')
  monkeypatch.setattr(model, 'init_params', lambda *a: pytest.fail('built'))
  argv = [*FAST, '--optimizer', 'adamw', '--out', str(tmp_path)]
  line = _expect_usage_error(
    [*argv, '--seq-len', '100000'], capsys, '--seq-len 100000', 'per device'
  )
  assert f'{need_gib:.2f} GiB' in line


def test_nonfinite_loss_stops_with_its_step(tmp_path, capsys, monkeypatch):
  """A NaN loss stops the run, naming the step; the CLI says so in a line.

  The NaN comes from one token id outside the vocabulary, which the embedding
  lookup (``jnp.take``) turns into NaN, at a position that only the batch of
  the third step reads (batches are a pure function of the step).
  """
  model_cfg, train_cfg = presets.from_preset(
    'tiny', name='adamw', **FAST_SETTINGS
  )
  size, bad_step = 5_000, 3
  batch = lambda step, tokens: data.get_batch(tokens, step, 4, 32, seed=0)
  read_before = {
    int(i) for s in range(bad_step - 1) for i in batch(s, np.arange(size)).flat
  }
  (position, *_) = sorted(
    set(batch(bad_step - 1, np.arange(size)).flat) - read_before
  )
  tokens = (np.arange(size) % 256).astype(np.int32)
  tokens[position] = 10**6
  val_tokens = np.full(100, ord('a'), np.int32)
  corpus = data.Corpus(tokens, val_tokens, 'test', tokenizer.make())
  with pytest.raises(train.NonFiniteLoss) as error:
    train.train(model_cfg, train_cfg, corpus, progress=False)
  assert error.value.step == bad_step and math.isnan(error.value.loss)
  assert f'the training loss is nan at step {bad_step}' in str(error.value)
  # The command line: exit code 1 and that one line.
  monkeypatch.setattr(train, 'train', lambda *a, **k: _raise(error.value))
  _expect_usage_error(
    [*FAST, '--optimizer', 'adamw', '--out', str(tmp_path)],
    capsys,
    f'nan at step {bad_step}',
    '--lr',
    code=1,
  )


def _raise(error):
  raise error


def test_help_gives_every_option_a_help_and_each_default_once():
  parser = train_lm.build_parser()
  for action in parser._actions:
    if action.dest == 'help':
      continue
    text = action.help or ''
    assert text.strip(), f'{action.option_strings} has no help'
    assert text.count('(default') <= 1, text
    assert '(default: None)' not in text, text
  help_text = parser.format_help()
  assert '--partition PARTITION' in help_text
  for name in config.PARTITIONS:
    assert name in help_text, name
  assert '--tokenizer {byte,bpe}' in help_text
  assert '--value-blocks {neuron,whole}' in help_text
  assert '--mu-dtype {float32,bfloat16,int8,int4}' in help_text
  # A flag's default shows the preset's value where presets differ.
  assert "(default: the preset's; 800 for tiny)" in ' '.join(help_text.split())


def _v_shapes(opt_cfg, model_cfg):
  """Adam-mini's ``v`` per weight path, for the config's partition."""
  params = model.abstract_params(model_cfg)
  tx = optimizer.make_optimizer(opt_cfg, model_cfg, params)
  (state,) = [
    s
    for s in jax.tree.leaves(
      jax.eval_shape(tx.init, params),
      is_leaf=lambda s: isinstance(s, optax_adam_mini.ScaleByAdamMiniState),
    )
    if isinstance(s, optax_adam_mini.ScaleByAdamMiniState)
  ]
  leaves = jax.tree_util.tree_flatten_with_path(state.v)[0]
  return {'/'.join(path_names(p)): v.shape for p, v in leaves}, params


def test_partition_and_value_blocks_flags():
  def opt_cfg(*flags):
    args = train_lm.build_parser().parse_args(list(flags))
    return train_lm.configs_from_args(args)[1].opt

  model_cfg = presets.PRESETS['tiny'].model
  assert opt_cfg().partition == 'default'
  # elementwise: one v per coordinate, i.e. plain Adam.
  v, params = _v_shapes(opt_cfg('--partition', 'elementwise'), model_cfg)
  flat = {'/'.join(path_names(p)): x.shape for p, x in _flatten(params)}
  assert v == flat
  # whole: one v per leaf.
  v, _ = _v_shapes(opt_cfg('--partition', 'whole'), model_cfg)
  assert all(math.prod(shape) == 1 for shape in v.values())
  # Values: one v per output neuron (kv_heads * head_dim = 64), or one per leaf.
  value = 'layers/0/self_attn/v_proj/kernel'
  v, _ = _v_shapes(opt_cfg(), model_cfg)
  assert math.prod(v[value]) == 64
  v, _ = _v_shapes(opt_cfg('--value-blocks', 'whole'), model_cfg)
  assert math.prod(v[value]) == 1
  assert math.prod(v['layers/0/mlp/up_proj/kernel']) == 344  # unchanged


def _flatten(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_command_line_error_is_one_line(tmp_path):
  """The real command: a bad path exits with code 2 and one line."""
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), '--data', str(tmp_path / 'nope')],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
    env={**os.environ, 'PYTHONPATH': str(ROOT)},
  )
  assert proc.returncode == 2, proc.stderr
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith('train_lm.py: error: --data') and 'nope' in line


def test_sharded_mesh(tmp_path, text_file):
  """FSDP x tensor parallel = 2 x 2 on host CPU devices (see conftest.py)."""
  if len(jax.devices()) < 4:
    pytest.skip('needs the host CPU devices that tests/conftest.py sets up')
  argv = [*FAST, '--optimizer', 'adam_mini', '--data', str(text_file)]
  sharded = train_lm.main(
    [*argv, '--mesh', 'data=1,fsdp=2,tp=2', '--out', str(tmp_path / 'a')]
  )['adam_mini']
  single = train_lm.main(
    [*argv, '--mesh', 'data=1', '--out', str(tmp_path / 'b')]
  )['adam_mini']
  kernel = sharded.params['layers'][0]['mlp']['up_proj']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tp')
  assert len(kernel.addressable_shards) == 4
  assert kernel.addressable_shards[0].data.shape == (64, 172)
  # Adam-mini's first moment is sharded like its weight.
  suffix = ('mu', 'layers', '0', 'mlp', 'up_proj', 'kernel')
  (mu,) = [
    leaf
    for path, leaf in _flatten(sharded.opt_state)
    if path_names(path)[-len(suffix) :] == suffix
  ]
  assert mu.sharding.spec == kernel.sharding.spec
  # Same model and data; the sums run in another order, in bfloat16.
  np.testing.assert_allclose(
    sharded.metrics['history']['train_loss'],
    single.metrics['history']['train_loss'],
    rtol=2e-2,
  )
  assert sharded.metrics['mesh'] == {'data': 1, 'fsdp': 2, 'tp': 2}


def test_data_pipeline(tmp_path):
  tokens = np.arange(1000, dtype=np.int64).astype(np.uint8)
  a = data.get_batch(tokens, 7, 4, 16, seed=3)
  b = data.get_batch(tokens, 7, 4, 16, seed=3)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 17) and a.dtype == np.int32
  assert not np.array_equal(a, data.get_batch(tokens, 8, 4, 16, seed=3))
  # Windows are contiguous runs of the corpus.
  np.testing.assert_array_equal(np.diff(a, axis=1) % 256, 1)
  # A folder: every non-hidden text file, binary files skipped; one file
  # held out whole for validation (tests/test_data.py has the details).
  (tmp_path / 'b.txt').write_text('second ')
  (tmp_path / 'a.txt').write_text('first ')
  (tmp_path / '.hidden').write_text('nope ')
  (tmp_path / 'blob.bin').write_bytes(b'\0\1\2')
  text, _ = data.read_text(str(tmp_path))
  assert sorted(text.split()) == ['first', 'second']
  corpus = data.load(config.DataConfig(path=str(tmp_path), val_fraction=0.5))
  assert corpus.tokenizer.name == 'byte'
  splits = [bytes(t.astype(np.uint8)) for t in corpus[:2]]
  assert sorted(splits) == [b'first ', b'second ']
  assert corpus.train_tokens.dtype == np.int32
  # The built-in corpus: the standard library, deterministic, capped.
  text, desc = data.read_text(None, max_bytes=10_000)
  assert len(text.encode('utf-8', 'surrogateescape')) == 10_000
  assert os.path.dirname(os.__file__) in desc
  assert text == data.read_text(None, max_bytes=10_000)[0]


def test_byte_tokenizer_keeps_every_byte(tmp_path):
  raw = bytes(range(256)) * 2  # not valid UTF-8
  path = tmp_path / 'raw.txt'
  path.write_bytes(raw.replace(b'\0', b' '))
  text, _ = data.read_text(str(path))
  byte = tokenizer.make('byte')
  ids = byte.encode(text)
  assert ids.dtype == np.int32
  assert bytes(ids.astype(np.uint8)) == raw.replace(b'\0', b' ')
  assert byte.decode(byte.encode('Adam-mini é')) == 'Adam-mini é'
  assert tokenizer.make('byte', vocab_size=256).vocab_size == 256
  with pytest.raises(config.UsageError, match='fixed vocabulary of 256'):
    tokenizer.make('byte', vocab_size=300)


def test_throughput_leaves_out_first_step_and_skipped_time(monkeypatch):
  now = [0.0]
  monkeypatch.setattr(train.time, 'perf_counter', lambda: now[0])
  clock = train.Throughput(tokens_per_step=100)
  clock.start()
  now[0] = 5.0  # the first step: waits for everything queued before it
  clock.record(1)
  now[0] = 7.0  # then 4 steps in 2 s
  clock.record(4)
  now[0] = 30.0  # evaluation: not training time
  clock.skip()
  now[0] = 31.0  # 2 more steps in 1 s
  clock.record(2)
  assert (clock.seconds, clock.tokens) == (3.0, 600)
  assert clock.final_rate(steps_done=7) == 200.0
  single = train.Throughput(tokens_per_step=100)
  single.start()
  now[0] = 35.0
  single.record(1)  # a one-step run: its time, compilation included
  assert single.final_rate(steps_done=1) == 100 / 4.0


def test_configs_check_their_fields():
  with pytest.raises(config.UsageError, match='num_kv_heads'):
    config.ModelConfig(num_heads=4, num_kv_heads=3)
  cfg = config.ModelConfig(d_model=256, num_heads=8)  # resolved once
  assert (cfg.num_kv_heads, cfg.head_dim) == (8, 32)
  with pytest.raises(config.UsageError, match='--warmup-steps must be >= 0'):
    config.OptimizerConfig(warmup_steps=-1)
  with pytest.raises(config.UsageError, match='unknown settings'):
    presets.from_preset('tiny', stepz=3)
  model_cfg, train_cfg = presets.from_preset('tiny', steps=40)
  # The schedule follows --steps, the warmup is 10% of it (at most 80).
  assert (train_cfg.opt.schedule_steps, train_cfg.opt.warmup_steps) == (40, 4)
  assert dataclasses.replace(train_cfg, stop_after=10).end_step == 10


def test_package_docstrings_run():
  for module in (examples.lm, tokenizer):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed, module.__name__
