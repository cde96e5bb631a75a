"""benchmarks/convergence.py: the study's chunks, records, merge and plan.

The smoke test runs the real pipeline (the trainer, a BPE trained on this
repository's own sources, two optimizers, resumption, a warm-up-built
partition, the merge) at a size that compiles and trains in seconds on a
CPU. The merge's arithmetic is checked on records made here, whose best
learning rates and ratios are worked out by hand.
"""

import argparse
import json
import math
import os

import pytest

import optax_adam_mini
from benchmarks import convergence as cv
from examples.lm import data, optimizer


def _run(chunk, out):
  cv.run(
    argparse.Namespace(
      chunks=[chunk],
      out=str(out),
      results=str(out),
      cache=str(out / 'cache'),
      work=str(out / 'work'),
      budget_s=math.inf,
    )
  )


def test_smoke_run_resume_calibrate_merge(tmp_path, capsys):
  out = tmp_path / 'out'
  _run('smoke-short', out)
  points = sorted(os.listdir(out / 'points'))
  assert points == [
    'smoke_tpp1_adam_mini_default_lr0.01_s0.json',
    'smoke_tpp1_adamw_default_lr0.01_s0.json',
  ]
  records = cv.load_points([str(out)])
  # Non-embedding parameters of the smoke model by hand (d=32, one layer,
  # 2 query heads and 1 KV head of 16, MLP 64): q and o 32*32, k and v
  # 32*16, the MLP 3*32*64, three norms of 32.
  non_embedding = 2 * 1024 + 2 * 512 + 3 * 32 * 64 + 3 * 32
  for record in records.values():
    assert record['params']['non_embedding'] == non_embedding
    assert record['steps'] == round(1.0 * non_embedding / (4 * 32)) == 73
    assert record['tokens'] == record['steps'] * 4 * 32
    assert math.isfinite(record['final_val_loss'])
    assert record['val_curve'][0][0] == 0 and record['val_curve'][-1][0] == 73
    assert record['wall_s'] > 0 and record['device_s'] == record['wall_s']
    assert record['estimate']['train_flops_per_token'] > 0
    env = record['environment']
    assert env['device'].startswith('cpu') and env['versions']['jax']
    assert env['date'][:2] == '20'
  mini, adamw = (
    records[f'smoke_tpp1_{o}_default_lr0.01_s0'] for o in ('adam_mini', 'adamw')
  )
  # Same initial weights and validation set: the same loss before step 1.
  assert mini['val_curve'][0] == adamw['val_curve'][0]
  assert mini['optimizer_state_bytes'] < 0.6 * adamw['optimizer_state_bytes']
  assert (out / 'chunks').is_dir() and os.listdir(out / 'chunks')
  assert [f for f in os.listdir(out) if f.startswith('bpe_512_')]  # comes back
  capsys.readouterr()

  # Resumable: the points exist, so nothing runs (nothing is even loaded).
  _run('smoke-short', out)
  assert '0 to run' in capsys.readouterr().out

  # A point too long for one call runs in parts, checkpointed between
  # them, and ends exactly where it would have in one go.
  corpus = data.load(
    cv.study_data_config('smoke'), cache_dir=str(out / 'cache')
  )
  work = str(tmp_path / 'work')
  point = cv.Point('smoke', 1.0, 'adamw', 0.01)
  assert cv.run_point(point, corpus, work_dir=work, stop_after=30) is None
  assert cv.progress(work, point)['step'] == 30
  whole = cv.run_point(point, corpus, work_dir=work)
  assert whole['calls'] == 2
  assert not os.path.exists(os.path.join(work, point.id))
  assert whole['val_curve'] == adamw['val_curve']
  assert whole['train_curve'] == adamw['train_curve']

  # A quantized m (issue 14) trains through the same pipeline, with the
  # same init and batches as float32 m's point: its first loss is the same.
  point = cv.Point('smoke', 1.0, 'adam_mini', 0.01, mu_dtype='int8')
  int8 = cv.run_point(point, corpus)
  assert int8['optimizer_config']['mu_dtype'] == 'int8'
  assert int8['val_curve'][0] == mini['val_curve'][0]
  assert math.isfinite(int8['final_val_loss'])
  assert int8['optimizer_state_bytes'] < 0.6 * mini['optimizer_state_bytes']

  # The warm-up-built partition: SlimAdam's rule on AdamW's first 10%.
  point = cv.Point('smoke', 1.0, 'adam_mini', 0.01, partition=cv.SNR)
  model_cfg, train_cfg = cv.point_configs(point, corpus.tokenizer.vocab_size)
  lines = []
  calibrated, record = cv._calibrate(
    point, model_cfg, train_cfg, corpus, lines.append
  )
  assert record['steps'] == 7 and record['warmup_optimizer'] == 'adamw'
  paths = {d['path'] for d in record['decisions']}
  assert 'layers/0/mlp/down_proj/kernel' in paths and len(lines) == len(paths)
  for d in record['decisions']:
    if 'norm' in d['path']:
      assert d['block'] == 'Block.elementwise()' and d['snr'] == []
  # Every leaf's block is stated, and the state is that of those blocks.
  assert len(calibrated.opt.layouts) == len(paths)
  abstract = cv.model.abstract_params(model_cfg)
  assert (
    optimizer.state_bytes(calibrated.opt, model_cfg, abstract)
    <= (adamw['optimizer_state_bytes'])
  )

  merged = tmp_path / 'merged'
  summary, png = tmp_path / 'convergence.json', tmp_path / 'convergence.png'
  cv.merge(
    argparse.Namespace(
      folders=[str(out)], to=str(merged), summary=str(summary), png=str(png)
    )
  )
  assert sorted(os.listdir(merged / 'points')) == points
  group = json.loads(summary.read_text())['groups']['smoke tpp=1']
  assert group['best_lr'] == {'adamw': 0.01, 'adam_mini': 0.01}
  ratio = mini['final_val_loss'] / adamw['final_val_loss']
  assert group['ratio_at_best_lr'] == pytest.approx(ratio)
  assert group['ratio_at_equal_lr'] == {'0.01': pytest.approx(ratio)}
  assert png.stat().st_size > 10_000


def _record(
  size, tpp, opt, lr, loss, seed=0, partition='default', state=1.0, mu='float32'
):
  point = cv.Point(size, tpp, opt, lr, seed, partition, mu)
  return {
    'id': point.id,
    'point': point._asdict(),
    'final_val_loss': loss,
    'val_curve': [[0, 9.0], [10, loss or 9.0]],
    'steps': 10,
    'tokens': 100,
    'params': {'total': 2, 'non_embedding': 1, 'embedding_and_head': 1},
    'epochs': 0.5,
    'device_s': 3.0,
    'optimizer_state_bytes': state,
    'adamw_state_bytes': 2.0,
  }


def test_merge_best_lr_and_ratios():
  losses = {  # lr: (AdamW seeds 0 and 1, Adam-mini seeds 0 and 1)
    1e-3: ((3.10, 3.12), (3.20, 3.18)),
    2e-3: ((3.00, 3.02), (3.08, 3.10)),
    4e-3: ((3.05, 3.03), (None, 3.05)),  # Adam-mini seed 0 diverged
  }
  records = {}
  for lr, (adamw, mini) in losses.items():
    for seed in (0, 1):
      for opt, loss in (('adamw', adamw[seed]), ('adam_mini', mini[seed])):
        r = _record('10m', 4.0, opt, lr, loss, seed)
        records[r['id']] = r
  r = _record(
    '10m', 4.0, 'adam_mini', 2e-3, 3.05, partition='adam:mlp', state=1.5
  )
  records[r['id']] = r
  group = cv._group_table(records, '10m', 4.0)
  # Means: AdamW 3.11, 3.01, 3.04; Adam-mini 3.19, 3.09, inf (diverged).
  assert group['best_lr'] == {'adamw': 2e-3, 'adam_mini': 2e-3}
  assert group['ratio_at_best_lr'] == pytest.approx(3.09 / 3.01)
  assert group['ratio_at_best_lr_seeds'] == [0, 1]
  assert group['ratio_at_equal_lr']['0.001'] == pytest.approx(3.19 / 3.11)
  assert group['ratio_at_equal_lr']['0.004'] is None
  assert group['losses']['adam_mini']['0.004']['val_losses'] == [None, 3.05]
  assert group['best_lr_at_edge_of_sweep'] == {
    'adamw': False,
    'adam_mini': False,
  }
  # The ablation ran at seed 0 only: it is compared with seed 0's points
  # (AdamW 3.00, the default 3.08), not with means over both seeds.
  table = cv._partition_table(records, '10m', 4.0)
  mlp = table['adam:mlp']
  assert mlp['ratio_at_best_lr_to_adamw_best'] == pytest.approx(3.05 / 3.00)
  row = mlp['by_lr']['0.002']
  assert row['seeds'] == [0]
  assert row['ratio_to_adamw_same_lr'] == pytest.approx(3.05 / 3.00)
  assert row['ratio_to_default_same_lr'] == pytest.approx(3.05 / 3.08)
  assert table['default']['by_lr']['0.002']['ratio_to_adamw_same_lr'] == (
    pytest.approx(3.09 / 3.01)
  )
  assert mlp['state_ratio_to_adamw'] == 0.75
  # A later chunk takes these best learning rates.
  chinchilla = [
    p
    for opt in cv.OPTIMIZERS
    for p in cv.chunk_points(cv.CHUNKS[f'10m-chinchilla-{opt}'], records)
  ]
  assert [(p.optimizer, p.lr, p.tokens_per_param) for p in chinchilla] == [
    ('adamw', 2e-3, 20.0),
    ('adam_mini', 2e-3, 20.0),
  ]
  roles = cv.chunk_points(cv.CHUNKS['10m-roles-1'], records)
  assert {p.lr for p in roles} == {2e-3} and len(roles) == 4
  with pytest.raises(SystemExit, match='run its sweep first'):
    cv.chunk_points(cv.CHUNKS['10m-chinchilla-adamw'], {})


def test_ratios_pair_the_seeds_both_optimizers_ran():
  """A second seed of one optimizer only (AdamW's best lr at 40m) must not
  enter the ratio: seed 1 here is 2 % worse for both, as seeds can be."""
  records = {}
  for opt, lr, seed, loss in (
    ('adamw', 1e-3, 0, 3.10), ('adamw', 2e-3, 0, 3.00),
    ('adamw', 2e-3, 1, 3.06),
    ('adam_mini', 1e-3, 0, 3.20), ('adam_mini', 2e-3, 0, 3.03),
  ):  # fmt: skip
    r = _record('40m', 4.0, opt, lr, loss, seed)
    records[r['id']] = r
  group = cv._group_table(records, '40m', 4.0)
  assert group['best_lr'] == {'adamw': 2e-3, 'adam_mini': 2e-3}
  assert group['losses']['adamw']['0.002']['mean_val_loss'] == (
    pytest.approx(3.03)
  )
  assert group['ratio_at_best_lr'] == pytest.approx(3.03 / 3.00)
  assert group['ratio_at_best_lr_seeds'] == [0]
  assert group['ratio_at_equal_lr'] == {
    '0.001': pytest.approx(3.20 / 3.10),
    '0.002': pytest.approx(3.03 / 3.00),
  }
  assert group['ratio_at_equal_lr_seeds'] == {'0.001': [0], '0.002': [0]}


def test_best_lr_compares_the_seeds_every_lr_ran():
  """Session 8's 40m case: Adam-mini's second seed at its best lr is worse
  than its first; a mean over both seeds there against one seed elsewhere
  would move the best lr to 1e-3 by the seed, not by the lr."""
  records = {}
  for opt, partition, lr, seed, loss in (
    ('adamw', 'default', 1e-3, 0, 3.10), ('adamw', 'default', 2e-3, 0, 3.00),
    ('adamw', 'default', 2e-3, 1, 3.06),
    ('adam_mini', 'default', 1e-3, 0, 3.05),
    ('adam_mini', 'default', 2e-3, 0, 3.03),
    ('adam_mini', 'default', 2e-3, 1, 3.09),
    ('adam_mini', 'slim', 1e-3, 0, 3.04), ('adam_mini', 'slim', 2e-3, 0, 3.02),
    ('adam_mini', 'slim', 2e-3, 1, 3.10),
  ):  # fmt: skip
    r = _record('40m', 4.0, opt, lr, loss, seed, partition=partition)
    records[r['id']] = r
  group = cv._group_table(records, '40m', 4.0)
  # Over seed 0, the one both lrs ran: 3.03 < 3.05 (both seeds: 3.06).
  assert group['best_lr'] == {'adamw': 2e-3, 'adam_mini': 2e-3}
  assert group['ratio_at_best_lr'] == pytest.approx(3.06 / 3.03)
  assert group['ratio_at_best_lr_seeds'] == [0, 1]
  slim = cv._partition_table(records, '40m', 4.0)['slim']
  assert slim['best_lr'] == 2e-3  # 3.02 < 3.04 on seed 0
  assert slim['ratio_at_best_lr_to_adamw_best'] == pytest.approx(3.06 / 3.03)
  assert slim['by_lr']['0.002']['seeds'] == [0, 1]
  # No seed common to every lr: each lr's own mean.
  assert cv._best_of({(1e-3, 0): 3.05, (2e-3, 1): 3.04}) == 2e-3
  assert cv._best_of({}) is None


def test_quantized_m_points_sit_beside_float32_ones():
  """Issue 14's points: a quantized m at Adam-mini's best lr, compared with
  float32 m's point of the same lr and seed, and kept out of every other
  table (sweep means, best lrs, partitions, curves)."""
  records = {}
  for opt, lr, loss in (
    ('adamw', 1e-3, 3.10), ('adamw', 2e-3, 3.00),
    ('adam_mini', 1e-3, 3.20), ('adam_mini', 2e-3, 3.08),
  ):  # fmt: skip
    r = _record('10m', 4.0, opt, lr, loss)
    records[r['id']] = r
  points = cv.chunk_points(cv.CHUNKS['10m-quantized-m'], records)
  assert {(p.lr, p.optimizer) for p in points} == {(2e-3, 'adam_mini')}
  assert [p.mu_dtype for p in points] == [
    'int8-dynamic', 'int4-dynamic', 'int8-linear', 'int4-linear'
  ]  # fmt: skip
  # Float32 points keep the ids of the points measured before the field.
  assert cv.Point('10m', 4.0, 'adam_mini', 2e-3).id == (
    '10m_tpp4_adam_mini_default_lr0.002_s0'
  )
  assert points[0].id == (
    '10m_tpp4_adam_mini_default_lr0.002_s0_mu-int8-dynamic'
  )
  # A quantized m that is much worse (4.0) must not move any float table.
  for mu, loss, state in (('int8', 3.0954, 0.3), ('int4', 4.0, 0.2)):
    r = _record('10m', 4.0, 'adam_mini', 2e-3, loss, state=state, mu=mu)
    records[r['id']] = r
  group = cv._group_table(records, '10m', 4.0)
  assert group['ratio_at_best_lr'] == pytest.approx(3.08 / 3.00)
  assert group['losses']['adam_mini']['0.002']['val_losses'] == [3.08]
  assert cv._partition_table(records, '10m', 4.0).keys() == {'default'}
  table = cv._moment_table(records, '10m', 4.0)
  assert table.keys() == {'int8', 'int4'}
  assert table['int8']['points'] == [{
    'lr': 2e-3, 'seed': 0, 'val_loss': 3.0954, 'float32_val_loss': 3.08,
    'ratio_to_float32': pytest.approx(3.0954 / 3.08),
  }]  # fmt: skip
  assert table['int8']['max_ratio_to_float32'] == pytest.approx(3.0954 / 3.08)
  assert table['int4']['state_ratio_to_adamw'] == 0.1
  assert table['int4']['state_ratio_to_float32'] == 0.2
  # The trainer gets the library's quantization for each name: a named code
  # rounds to nearest unless the name asks for stochastic rounding; a bare
  # width is the library's default.
  q = optax_adam_mini.MomentQuantization
  for name, want in (
    ('int8-linear', q(bits=8, code='linear', stochastic_rounding='none')),
    ('int8-dynamic', q(bits=8, code='dynamic', stochastic_rounding='none')),
    ('int8-linear-srall', q(bits=8, code='linear', stochastic_rounding='all')),
    ('int8', 'int8'),
  ):
    point = cv.Point('10m', 4.0, 'adam_mini', 2e-3, mu_dtype=name)
    _, train_cfg = cv.point_configs(point, vocab_size=512)
    assert train_cfg.opt.mu_dtype == want, name


def test_every_planned_chunk_fits_one_call():
  """The chunks meant for sessions fit the 9 minutes of a call at the plan's
  throughput, with cold data, or are one point that runs in checkpointed
  parts; the grid covers the issue."""
  for chunk in cv.CHUNKS.values():
    if chunk.session in ('later', 'smoke'):
      continue
    size = cv.SIZES[chunk.size]
    lrs = chunk.lrs if chunk.lrs.startswith('lr=') else f'lr={size.lrs[1]:g}'
    points = cv.chunk_points(chunk._replace(lrs=lrs), {})
    assert points, chunk.name
    if chunk.lrs == 'sweep':
      points *= len(size.lrs)
    seconds = cv.DATA_S['cold'] + sum(
      cv.estimate(p, size.model.vocab_size)['seconds'] for p in points
    )
    assert seconds < cv.BUDGET_S or len(points) == 1, (chunk.name, seconds)
  # Both sizes at the short horizon, each a 3-point sweep per optimizer; the
  # smaller at 1x Chinchilla too.
  names = set(cv.CHUNKS)
  assert {'10m-chinchilla-adamw', '10m-chinchilla-adam_mini'} <= names
  assert {'40m-chinchilla-adamw', '40m-chinchilla-adam_mini'} <= names
  # Factors of 2 apart (BENCHMARKS.md section 4), 40m extended upwards when
  # both optimizers were best at its largest.
  assert cv.SIZES['10m'].lrs == (1e-3, 2e-3, 4e-3)
  assert cv.SIZES['40m'].lrs == (5e-4, 1e-3, 2e-3, 4e-3)
  for size, horizon, seeds in (('10m', 4.0, {0, 1}), ('40m', 4.0, {0})):
    swept = set()
    for chunk in cv.CHUNKS.values():
      if (chunk.size, chunk.tokens_per_param, chunk.partitions) != (
        size,
        horizon,
        ('default',),
      ) or chunk.mu_dtypes != (cv.FLOAT_MU,):
        continue
      if chunk.lrs.startswith('best'):  # a repeat at the sweep's best lr
        continue
      lrs = cv.SIZES[size].lrs if chunk.lrs == 'sweep' else chunk.lrs[3:]
      lrs = (
        [float(lr) for lr in lrs.split(',')] if isinstance(lrs, str) else lrs
      )
      swept |= {
        (o, lr, s) for o in chunk.optimizers for lr in lrs for s in chunk.seeds
      }
    expected = {
      (o, lr, s)
      for o in cv.OPTIMIZERS
      for lr in cv.SIZES[size].lrs
      for s in seeds
    }
    assert swept == expected, size
