"""The searches of ``benchmarks/train_bench.py``, on the CPU.

The compiled step's memory analysis predicts a batch (``throughput``) or a
depth (``largest``); real runs confirm it and step down on out-of-memory
errors. Here the runs are faked, and the probes too for the batch search, so
only the searches are exercised; one trial runs for real at the tiny size.
"""

import argparse
import dataclasses

import pytest

from benchmarks import scan_llama, train_bench

GB = 1e9


def _args(**overrides):
  args = argparse.Namespace(
    model='tiny',
    limit_bytes=100 * GB,
    seq=16,
    probe_batches=[1, 2],
    policies='dots',
    opts='adam_mini',
    budget_s=1e9,
    headroom=1.0,
    max_batch=0,
    steps=2,
  )
  vars(args).update(overrides)
  return args


def _fake(monkeypatch, fits_up_to, error='Out of memory while allocating'):
  """A probe predicting batch 12 (10 GB fixed + 7.5 GB per sequence) and
  runs that fit up to ``fits_up_to`` sequences."""
  monkeypatch.setattr(
    train_bench,
    'probe',
    lambda cfg, opt, policy, batch, seq: {'peak': (10 + 7.5 * batch) * GB},
  )
  tried = []

  def run(spec, timeout):
    tried.append(spec['batch'])
    if spec['batch'] <= fits_up_to:
      return {
        'ok': True,
        'batch': spec['batch'],
        'tokens_per_s': 1.0,
        'step_s': 1.0,
      }
    return {'ok': False, 'oom': 'memory' in error, 'error': error}

  monkeypatch.setattr(train_bench, 'run_trial_subprocess', run)
  return tried


def test_steps_down_until_a_batch_fits(monkeypatch):
  # Llama-3-8B, AdamW, full remat: predicted 6, three OOMs, and the old
  # three-try search stopped before batch 2, which fits.
  tried = _fake(monkeypatch, fits_up_to=2)
  res = train_bench.mode_throughput(_args(), start=0.0)
  (run,) = res['runs']
  assert run['predicted_batch'] == 12
  assert tried == [12, 10, 9, 8, 7, 6, 5, 4, 3, 2]
  assert run['failed_batches'] == tried[:-1]
  assert run['ok'] and run['batch'] == 2
  assert res['best']['adam_mini']['batch'] == 2


def test_stops_at_an_error_other_than_memory(monkeypatch):
  tried = _fake(monkeypatch, fits_up_to=2, error='compilation failed')
  (run,) = train_bench.mode_throughput(_args(), start=0.0)['runs']
  assert tried == [12]
  assert not run.get('ok')
  assert run['errors'] == ['compilation failed']


def test_reports_when_nothing_fits(monkeypatch):
  tried = _fake(monkeypatch, fits_up_to=0)
  (run,) = train_bench.mode_throughput(_args(), start=0.0)['runs']
  assert tried[-1] == 1
  assert run['error'] == 'does not fit at batch 1'


def test_largest_search_probes_a_quantized_m_as_itself(monkeypatch, tmp_path):
  # The real probes (compiled on this CPU at the tiny size); trials faked to
  # fit up to the predicted depth.
  tried = []

  def run(spec, timeout):
    tried.append((spec['opt'], spec['config']['n_layers']))
    return {'ok': True}

  monkeypatch.setattr(train_bench, 'run_trial_subprocess', run)
  args = _args(
    opts='adamw,adam_mini,adam_mini_int8',
    limit_bytes=2e7,
    probe_layers=[2, 4],
    confirm_next=False,
  )
  res = train_bench.mode_largest(args, start=0.0)
  opts = res['opts']
  assert [m['probed_with'] for m in opts['adam_mini_int8']['probe']] == [
    'adam_mini_int8'
  ] * 2
  assert opts['adamw']['probe'][0]['probed_with'] == 'adam_mini'
  layers = [opts[o]['largest_layers'] for o in ('adamw', 'adam_mini')]
  layers.append(opts['adam_mini_int8']['largest_layers'])
  # Less state per layer, more layers in the same memory.
  assert layers[0] < layers[1] < layers[2], layers
  assert [o for o, _ in tried] == ['adamw', 'adam_mini', 'adam_mini_int8']
  text = train_bench.table('largest', res)
  assert 'adam_mini_int8' in text.splitlines()[-1]


@pytest.mark.parametrize(
  'first,largest,confirm_next,expected',
  [
    # Int8 m at Llama-2-7B width: predicted 73, fits 67 (say): down by 1, 2,
    # 4, 8 (73, 72, 70, 66 fits), then bisection between 66 and 70.
    (73, 67, False, [73, 72, 70, 66, 68, 67]),
    (54, 54, False, [54]),  # the prediction fits: one run
    (54, 56, True, [54, 55, 56, 57]),  # confirm upwards while they fit
    (5, 0, False, [5, 4, 2]),  # nothing fits: 5, 4, 2, then below 1
  ],
)
def test_largest_that_fits(first, largest, confirm_next, expected):
  tried = []

  def fits(n):
    tried.append(n)
    return n <= largest

  got = train_bench.largest_that_fits(fits, first, confirm_next)
  assert tried == expected
  assert got == (largest or None)


def test_largest_that_fits_stops_when_told():
  tried = []

  def fits(n):
    tried.append(n)
    return None if n < 72 else False

  assert train_bench.largest_that_fits(fits, 73) is None
  assert tried == [73, 72, 70]


@pytest.mark.slow
def test_trial_trains_with_a_quantized_m():
  spec = {
    'config': dataclasses.asdict(scan_llama.LLAMA['tiny']),
    'opt': 'adam_mini_int8',
    'policy': 'full',
    'batch': 2,
    'seq': 16,
    'steps': 3,
  }
  result = train_bench.run_trial_subprocess(spec, timeout=240)
  assert result['ok'], result
  assert len(result['losses']) == 3
  fp32 = train_bench.state_bytes_of(scan_llama.LLAMA['tiny'], 'adam_mini')
  assert result['state_bytes_per_gpu'] < fp32 / 2
