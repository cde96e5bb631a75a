"""The batch search of ``benchmarks/train_bench.py throughput``, on the CPU.

The compiled step's memory analysis predicts a batch; real runs confirm it
and step down on out-of-memory errors. Here the probe and the runs are faked,
so only the search itself is exercised (no model is compiled or run).
"""

import argparse

from benchmarks import train_bench

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
