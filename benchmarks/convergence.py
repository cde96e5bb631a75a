"""The convergence study: Adam-mini's loss against AdamW's, as the paper measures it.

A grid of model size x tokens per parameter x optimizer x learning rate
(x seed, x Adam-mini partition for the ablations), trained with the example
trainer itself (``examples.lm``: its model, data, tokenizer, optimizers and
loop; nothing is copied here). Both optimizers of a point get the same
initial weights and the same batches in the same order (both are functions
of the seed), the same warmup + cosine schedule, weight decay, clipping and
``b1``/``b2``: the comparison differs in the second moment only.

The settings, fixed before any result was seen:

* models: the presets ``study-10m`` (9.4M non-embedding parameters:
  Llama, d=384, 6 layers, 6 query / 2 KV heads of 64) and ``study-40m``
  (37.8M: d=768, 6 layers, 12 / 4 heads), standard init N(0, 0.02),
  bfloat16 compute, float32 weights and optimizer state;
* data: the largest real text on the machine that runs it, the sources and
  docs (``.py .md .rst .txt``) of its installed Python packages (every
  ``site-packages``/``dist-packages`` folder; 500 MB at most, a hash-ordered
  sample of them), 2% of the files held out for validation; a 16,384-id
  byte-level BPE trained on 50 MB of the training files (so the validation
  text is unseen by tokenizer and model alike). The validation loss is
  measured on a fixed set of 8 x 128 windows of 512 tokens spread evenly
  over the held-out files;
* batches of 128 x 512 tokens; warmup 10% of the steps, cosine to 0.1x;
  ``b1`` 0.9, ``b2`` 0.95, ``eps`` 1e-8, weight decay 0.1 (matrices and
  embeddings), global-norm clipping at 1.0;
* horizons in tokens per *non-embedding* parameter: ``short`` = 4 (0.2x
  Chinchilla's 20) and ``chinchilla`` = 20. Non-embedding, because at these
  sizes a 16k vocabulary's two tables (12.6M parameters at d=384) outweigh
  the transformer they feed, and most of them are rows looked up or a
  single matmul rather than depth; Kaplan et al. (2020) found the
  non-embedding count to be the one that scales cleanly. Each point also
  records tokens per total parameter;
* learning rates: three per size, a factor of 2 apart (10m: 1e-3, 2e-3,
  4e-3; 40m: 5e-4, 1e-3, 2e-3), the same for both optimizers; the
  Chinchilla horizon and the ablations use each optimizer's best short-
  horizon learning rate (mean over seeds).

The device gives 10 minutes a call and 30 a session, so the grid is cut
into named chunks (``CHUNKS``), each planned at under 9 minutes on one H200
from the FLOPs per token of its train step (XLA's cost analysis of the
lowered step; backend-independent) at the effective bfloat16 throughput
measured for its size (``EFFECTIVE_FLOPS``), plus compilation and data
preparation. A chunk skips
points whose results exist (in ``--out`` or ``--results``) and stops before
a point that would overrun ``--budget-s``; it prints its estimate first.

Usage, from the repository root::

    python -m benchmarks.convergence plan -v                # chunks, points, estimates
    python -m benchmarks.convergence run 10m-short-s0a --out $OUT   # one device call
    python -m benchmarks.convergence run 10m-roles-3 10m-alt-qk-neuron --out $OUT  # in turn
    python -m benchmarks.convergence merge DIR [DIR ...]    # into benchmarks/results/
    python -m benchmarks.convergence smoke --out /tmp/x     # all of it, tiny, on a CPU

``run`` writes ``points/<id>.json`` (one per point: final validation loss,
curves, tokens, steps, wall and device time, state bytes, the estimate),
``chunks/<chunk>.json`` (device, versions, date, wall time) and the BPE
tokenizer it used. ``merge`` copies them into
``benchmarks/results/convergence/`` and writes ``convergence.json`` (every
point, the tables and ratios: Adam-mini / AdamW at each optimizer's best lr
and at equal lr, the ablations against AdamW with their state bytes, the
device time spent) and ``convergence.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import glob
import importlib.metadata
import json
import math
import os
import platform
import shutil
import site
import time
from typing import NamedTuple

import jax
import numpy as np

from benchmarks import quantized_moment
from examples.lm import (
  config,
  data,
  model,
  optimizer,
  presets,
  train,
)
from optax_adam_mini import calibrate, classify
from optax_adam_mini.layout import Role
from optax_adam_mini.partition import path_str

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results', 'convergence')
SUMMARY_JSON = os.path.join(ROOT, 'benchmarks', 'results', 'convergence.json')
SUMMARY_PNG = os.path.join(ROOT, 'benchmarks', 'results', 'convergence.png')
DEFAULT_CACHE = os.path.join(ROOT, 'runs', 'convergence', 'cache')
DEFAULT_WORK = os.path.join(ROOT, 'runs', 'convergence', 'work')

# The plan's clock: the effective bfloat16 rate of one H200 by model size
# (by `flops_per_token`'s count), and what a call spends besides training
# steps. Measured: the 10m points (session 1, 2026-12-02) 0.67-0.74M
# tokens/s, i.e. 73-80 TFLOP/s (150 had been assumed); the 40m points
# (session 5, 2026-12-03) 0.50-0.51M tokens/s, i.e. 166-168 TFLOP/s, the
# wider matmuls filling more of the GPU (75 had been assumed, which cut each
# 40m point into two calls). Other sizes plan at the slower rate. Reading and
# encoding the data took 39 s with the BPE trained (the first call's output;
# its log did not come back), 3 s from the cache.
EFFECTIVE_FLOPS = {'40m': 160e12}
SLOWEST_FLOPS = 75e12
COMPILE_S = 30.0  # one configuration's train and eval steps, on the GPU
SAVE_S = 30.0  # saving a checkpoint of a point run in parts
DATA_S = {'cold': 60.0, 'cached': 10.0}  # read, train the BPE, encode
BUDGET_S = 540.0  # a call's 10 minutes, less a minute of margin

HORIZONS = {'short': 4.0, 'chinchilla': 20.0}  # tokens / non-emb. param
SHORT = HORIZONS['short']
# Adam-mini with every block of size one is plain AdamW: the sanity point.
OPTIMIZERS = ('adamw', 'adam_mini')
SNR = 'snr'  # a partition built from a warm-up (SlimAdam's rule)


# ----------------------------------------------------------------------------
# Sizes, points, chunks


@dataclasses.dataclass(frozen=True)
class Size:
  """A model and what its runs share: batch, sequence, learning rates."""

  model: config.ModelConfig
  batch_size: int
  seq_len: int
  lrs: tuple[float, ...]
  eval_batches: int = 8
  evals: int = 16  # validation losses along a run (and at step 0)


def _study_size(preset: str, lrs) -> Size:
  _, model_cfg, train_cfg = presets.PRESETS[preset]
  return Size(model_cfg, train_cfg.batch_size, train_cfg.seq_len, lrs)


SIZES = {
  '10m': _study_size('study-10m', (1e-3, 2e-3, 4e-3)),
  # 4e-3 since session 6: both optimizers were best at 2e-3, the edge.
  '40m': _study_size('study-40m', (5e-4, 1e-3, 2e-3, 4e-3)),
  # The CPU smoke test: every code path, in seconds.
  'smoke': Size(
    config.ModelConfig(
      'llama', vocab_size=512, d_model=32, num_layers=1, num_heads=2,
      num_kv_heads=1, d_ff=64,
    ),
    batch_size=4, seq_len=32, lrs=(1e-2,), eval_batches=1, evals=4,
  ),
}  # fmt: skip


FLOAT_MU = 'float32'


class Point(NamedTuple):
  size: str
  tokens_per_param: float
  optimizer: str
  lr: float
  seed: int = 0
  partition: str = 'default'
  # Adam-mini's first moment: a variant of benchmarks/quantized_moment.py
  # (``int8``, ``int4-linear``, ...) or float32.
  mu_dtype: str = FLOAT_MU

  @property
  def id(self) -> str:
    part = self.partition.replace(':', '-').replace('+', '_')
    mu = '' if self.mu_dtype == FLOAT_MU else f'_mu-{self.mu_dtype}'
    return (
      f'{self.size}_tpp{self.tokens_per_param:g}_{self.optimizer}_{part}'
      f'_lr{self.lr:g}_s{self.seed}{mu}'
    )


def _mu_of(point: dict) -> str:
  """A record's first moment (points from before the field: float32)."""
  return point.get('mu_dtype', FLOAT_MU)


class Chunk(NamedTuple):
  """Points for one device call.

  ``lrs``: ``'sweep'`` (the size's learning rates), ``'lr=A,B'`` (these),
  ``'best'`` (each optimizer's best at the short horizon, default
  partition) or ``'best-adam_mini'`` (Adam-mini's best, for every optimizer
  given).
  """

  name: str
  size: str
  tokens_per_param: float
  optimizers: tuple[str, ...]
  lrs: str
  seeds: tuple[int, ...] = (0,)
  partitions: tuple[str, ...] = ('default',)
  session: str = ''  # when it is planned to run
  mu_dtypes: tuple[str, ...] = (FLOAT_MU,)


# The role ablation: one role (or a group) at a time made plain Adam, at
# Adam-mini's best learning rate; ``elementwise`` (every role plain Adam
# through Adam-mini's code) should match AdamW.
_ROLES = (
  ('adam:attention', 'adam:query+key', 'adam:query', 'adam:key'),
  ('adam:value+attention_out', 'adam:value', 'adam:attention_out', 'adam:mlp'),
  (
    'adam:norm', 'adam:embedding+output', 'adam:embedding', 'adam:output',
    'elementwise',
  ),
)  # fmt: skip
# The alternatives, each at the three learning rates of the sweep.
_ALTERNATIVES = ('qk-neuron', 'vom-input', 'slim', SNR)
_MINI = ('adam_mini',)
_SWEEP_PARTS = (('a', 'lr=0.001,0.002'), ('b', 'lr=0.004'))
CHUNKS = {
  c.name: c
  for c in (
    # The 10m sweep, two calls per seed: compiling each configuration costs
    # about as much as training it.
    *(
      Chunk(
        f'10m-short-s0{part}', '10m', SHORT, OPTIMIZERS, lrs, (0,),
        session='1',
      )
      for part, lrs in _SWEEP_PARTS
    ),
    # One optimizer a call: each ran five minutes (2,882 steps).
    *(
      Chunk(f'10m-chinchilla-{opt}', '10m', 20.0, (opt,), 'best', session='1')
      for opt in OPTIMIZERS
    ),
    *(
      Chunk(
        f'10m-short-s1{part}', '10m', SHORT, OPTIMIZERS, lrs, (1,),
        session='2',
      )
      for part, lrs in _SWEEP_PARTS
    ),
    *(
      Chunk(
        f'10m-roles-{i + 1}', '10m', SHORT, _MINI, 'best-adam_mini',
        partitions=roles, session='2' if i < 2 else '3',
      )
      for i, roles in enumerate(_ROLES)
    ),
    # The ablations that moved the loss at seed 0 (session 2: attention's
    # roles), again at seed 1: seeds spread more than these differences.
    Chunk(
      '10m-roles-s1', '10m', SHORT, _MINI, 'best-adam_mini', seeds=(1,),
      partitions=(
        'adam:attention', 'adam:query+key', 'adam:value+attention_out',
        'adam:output',
      ),
      session='3',
    ),
    *(
      Chunk(
        f'10m-alt-{name}', '10m', SHORT, _MINI, 'sweep', partitions=(name,),
        session='4' if name in ('slim', SNR) else '3',
      )
      for name in _ALTERNATIVES
    ),
    # One point a chunk, one call each (about 6 minutes at the measured
    # rate; planned at 75 TFLOP/s, the first three ran in two parts each).
    # 4e-3 last: added after session 6 (SIZES).
    *(
      Chunk(
        f'40m-short-{i + 1}', '40m', SHORT, (opt,), f'lr={lr:g}',
        session='5' if i < 3 else '6' if i < 6 else '7',
      )
      for i, (lr, opt) in enumerate(
        (lr, opt) for lr in (1e-3, 5e-4, 2e-3, 4e-3) for opt in OPTIMIZERS
      )
    ),
    # One optimizer a chunk, so that an nvidia-h200-x2 runs the two at once
    # (one process per GPU; BENCHMARKS.md section 4).
    *(
      Chunk(f'40m-chinchilla-{opt}', '40m', 20.0, (opt,), 'best', session='later')
      for opt in OPTIMIZERS
    ),
    # Issue 14: a quantized m against float32 m's points (same lr and seed).
    Chunk(
      '10m-quantized-m', '10m', SHORT, _MINI, 'best-adam_mini',
      mu_dtypes=('int8-dynamic', 'int4-dynamic', 'int8-linear', 'int4-linear'),
      session='2',
    ),
    # Round to nearest is sticky: a change of m under half a level is lost
    # every step. Stochastic rounding on every leaf keeps m unbiased.
    Chunk(
      '10m-quantized-m-sr', '10m', SHORT, _MINI, 'best-adam_mini',
      mu_dtypes=(
        'int8-linear-srall', 'int8-dynamic-srall', 'int4-linear-srall',
        'int4-dynamic-srall',
      ),
      session='2',
    ),
    # The shipped 8-bit default (linear codes, stochastic rounding by a hash
    # of index, step and seed), then its two measured knobs: a group 8x
    # larger (bitsandbytes' old 2048), and small leaves (norm scales)
    # quantized too instead of kept in float32.
    Chunk(
      '10m-quantized-m-default', '10m', SHORT, _MINI, 'best-adam_mini',
      mu_dtypes=('int8', 'int8-linear-g2048-srall', 'int8-linear-min0-srall'),
      session='3',
    ),
    # The shipped default's point again (run with an empty --results; its
    # output is kept apart, not merged), and with another rounding seed:
    # run-to-run spread, and noise-to-noise spread, of a stochastic m.
    Chunk(
      '10m-quantized-m-repeat', '10m', SHORT, _MINI, 'lr=0.002',
      mu_dtypes=('int8', 'int8-linear-srall-seed1'), session='control',
    ),
    # A stochastic m's spread: more rounding seeds of int8 and of int4 with
    # linear codes, then both at training seed 1 (another init and batch
    # order), beside float32 m's seed-1 point of the sweep.
    Chunk(
      '10m-quantized-m-seeds', '10m', SHORT, _MINI, 'lr=0.002',
      mu_dtypes=(
        'int8-linear-srall-seed2', 'int8-linear-srall-seed3',
        'int4-linear-srall-seed1', 'int4-linear-srall-seed2',
      ),
      session='3',
    ),
    Chunk(
      '10m-quantized-m-s1', '10m', SHORT, _MINI, 'lr=0.002', seeds=(1,),
      mu_dtypes=('int8-linear-srall', 'int4-linear-srall'), session='3',
    ),
    # Seed 1 showed int8 1.025x and 1.038x float32 m in two identical runs,
    # int4 0.998x: more rounding seeds there, and float32 m's own rerun at
    # seed 1 (empty --results, kept apart), to tell noise from a loss.
    Chunk(
      '10m-quantized-m-s1-seeds', '10m', SHORT, _MINI, 'lr=0.002',
      seeds=(1,),
      mu_dtypes=(
        'int8-linear-srall-seed1', 'int8-linear-srall-seed2',
        'int4-linear-srall-seed1',
      ),
      session='4',
    ),
    Chunk(
      '10m-repeat-s1', '10m', SHORT, _MINI, 'lr=0.002', seeds=(1,),
      session='control',
    ),
    # The alternative that beat the default at seed 0 (qk-neuron), at seed 1.
    Chunk(
      '10m-alt-qk-neuron-s1', '10m', SHORT, _MINI, 'best-adam_mini',
      seeds=(1,), partitions=('qk-neuron',), session='4',
    ),
    # The two alternatives best at seed 0 (slim 1.009x AdamW, snr 1.016x), at
    # seed 1; qk-neuron's seed-0 lead did not hold there.
    Chunk(
      '10m-alt-slim-s1', '10m', SHORT, _MINI, 'best-adam_mini',
      seeds=(1,), partitions=('slim', SNR), session='5',
    ),
    # slim led at 10m on two seeds (0.998x AdamW): at 40m, at Adam-mini's
    # best learning rate there (1.006x at seed 0, session 7; seed 1 pairs
    # with AdamW's and the default's seed 1), and at 1x Chinchilla (one
    # point a call).
    Chunk(
      '40m-alt-slim', '40m', SHORT, _MINI, 'best-adam_mini',
      partitions=('slim',), session='7',
    ),
    Chunk(
      '40m-alt-slim-s1', '40m', SHORT, _MINI, 'best-adam_mini', seeds=(1,),
      partitions=('slim',), session='8',
    ),
    *(
      Chunk(
        f'10m-chinchilla-slim-s{seed}', '10m', 20.0, _MINI, 'best-adam_mini',
        seeds=(seed,), partitions=('slim',), session=session,
      )
      for seed, session in ((0, '8'), (1, '9'), (2, '10'))
    ),
    # Issue 14 at the larger size: int8 m (the library's default code)
    # against float32 m's point of the same lr and seed (one call each).
    *(
      Chunk(
        f'40m-quantized-m{suffix}', '40m', SHORT, _MINI, 'best-adam_mini',
        seeds=(seed,), mu_dtypes=('int8-linear-srall',), session=session,
      )
      for suffix, seed, session in (('', 0, '8'), ('-s1', 1, '10'))
    ),
    # The 40m short ratio at a second seed, each optimizer at its best lr
    # (AdamW's ran in session 7).
    *(
      Chunk(
        f'40m-short-s1-{opt}', '40m', SHORT, (opt,), 'best', seeds=(1,),
        session='7' if opt == 'adamw' else '8',
      )
      for opt in OPTIMIZERS
    ),
    # The 1x Chinchilla ratio at a second and a third seed (the two seeds'
    # paired ratios, 1.0078 and 1.0030, straddle the 1.005 bound).
    *(
      Chunk(
        f'10m-chinchilla-s{seed}-{opt}', '10m', 20.0, (opt,), 'best',
        seeds=(seed,), session=session,
      )
      for seed, session in ((1, '9'), (2, '10'))
      for opt in OPTIMIZERS
    ),
    # Float32 m's point of session 1 again (run with an empty --results): the
    # run-to-run spread on the GPU at the same seed, init and batches.
    Chunk(
      '10m-repeat', '10m', SHORT, _MINI, 'lr=0.002', session='control'
    ),
    # The smoke test's chunks (CPU, seconds; one learning rate, as each
    # configuration costs a compilation).
    Chunk('smoke-short', 'smoke', 1.0, OPTIMIZERS, 'sweep', session='smoke'),
    Chunk(
      'smoke-snr', 'smoke', 1.0, _MINI, 'best-adam_mini',
      partitions=(SNR,), session='smoke',
    ),
    Chunk('smoke-long', 'smoke', 2.0, OPTIMIZERS, 'best', session='smoke'),
  )
}  # fmt: skip
# The smoke chunks' "short horizon" for best learning rates.
_SHORT_OF = {'smoke': 1.0}


def short_horizon(size: str) -> float:
  return _SHORT_OF.get(size, SHORT)


# ----------------------------------------------------------------------------
# Data


def package_folders() -> list[str]:
  """Every installed-packages folder of this Python, that exists."""
  folders = site.getsitepackages() + [site.getusersitepackages()]
  return sorted({f for f in folders if os.path.isdir(f)})


def study_data_config(size: str) -> config.DataConfig:
  if size == 'smoke':
    folders = [
      os.path.join(ROOT, 'examples'),
      os.path.join(ROOT, 'optax_adam_mini'),
    ]
    return config.DataConfig(
      path=os.pathsep.join(folders), file_types='.py,.md', max_bytes=300_000,
      val_fraction=0.1, tokenizer='bpe', vocab_size=512,
      tokenizer_train_bytes=200_000,
    )  # fmt: skip
  return config.DataConfig(
    path=os.pathsep.join(package_folders()),
    file_types='.py,.md,.rst,.txt',
    max_bytes=500_000_000,
    val_fraction=0.02,
    tokenizer='bpe',
    vocab_size=16384,
    tokenizer_train_bytes=50_000_000,
  )


def seed_cache(cache_dir: str, sources: list[str]) -> None:
  """Copies tokenizers saved by earlier calls into the cache (same key)."""
  os.makedirs(cache_dir, exist_ok=True)
  for folder in sources:
    for path in glob.glob(os.path.join(folder, 'bpe_*.json')):
      target = os.path.join(cache_dir, os.path.basename(path))
      if not os.path.exists(target):
        shutil.copy(path, target)


# ----------------------------------------------------------------------------
# One point


@functools.lru_cache(maxsize=32)
def non_embedding_params(model_cfg: config.ModelConfig) -> int:
  """Parameters outside the token embedding and the LM head (by role)."""
  leaves = jax.tree_util.tree_flatten_with_path(
    model.abstract_params(model_cfg)
  )
  total = 0
  for key_path, leaf in leaves[0]:
    names = tuple(str(getattr(k, 'key', k)) for k in key_path)
    if classify(names) not in (Role.EMBEDDING, Role.OUTPUT):
      total += math.prod(leaf.shape)
  return total


def point_configs(point: Point, vocab_size: int):
  """The ``ModelConfig`` and ``TrainConfig`` of ``point``."""
  size = SIZES[point.size]
  model_cfg = dataclasses.replace(size.model, vocab_size=vocab_size)
  tokens_per_step = size.batch_size * size.seq_len
  steps = max(
    1,
    round(
      point.tokens_per_param * non_embedding_params(model_cfg) / tokens_per_step
    ),
  )
  partition = 'default' if point.partition == SNR else point.partition
  opt = config.OptimizerConfig(
    name=point.optimizer,
    lr=point.lr,
    warmup_steps=steps // 10,
    schedule_steps=steps,
    partition=partition,
    mu_dtype=quantized_moment.mu_dtype_of(
      'f32' if point.mu_dtype == FLOAT_MU else point.mu_dtype
    ),
  )
  train_cfg = config.TrainConfig(
    steps=steps,
    batch_size=size.batch_size,
    seq_len=size.seq_len,
    seed=point.seed,
    eval_every=max(1, steps // size.evals),
    eval_batches=size.eval_batches,
    opt=opt,
  )
  return model_cfg, train_cfg


def flops_per_token(model_cfg, seq_len: int) -> tuple[float, float]:
  """FLOPs per token of a train step and of an eval step, counted by hand.

  The usual count (Kaplan et al. 2020, Hoffmann et al. 2022): a forward pass
  costs 2 FLOPs per matmul weight (every projection and the LM head; the
  embedding lookup none) plus ``4 T`` per layer and query channel for the
  attention scores and their weighted sum over ``T`` positions; training
  costs three forward passes. The optimizer's few FLOPs per parameter are
  left out. XLA's own count agrees on the CPU (109.2 and 36.5 MFLOP/token
  at 10m, against 108.5 and 36.2 here), but not on the GPU, where it leaves
  out the matmuls handed to cuBLAS.
  """
  c = model_cfg
  attention = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim * c.d_model
  attention += c.num_heads * c.head_dim * c.d_model
  mlp = (3 if c.arch == 'llama' else 2) * c.d_model * c.d_ff
  weights = c.num_layers * (attention + mlp) + c.d_model * c.vocab_size
  forward = 2 * weights + 4 * c.num_layers * seq_len * c.num_heads * c.head_dim
  return 3.0 * forward, float(forward)


def effective_flops(size: str) -> float:
  """The plan's bfloat16 FLOP/s for a model size (``EFFECTIVE_FLOPS``)."""
  return EFFECTIVE_FLOPS.get(size, SLOWEST_FLOPS)


def estimate(point: Point, vocab_size: int) -> dict:
  """The point's planned device seconds at its size's ``EFFECTIVE_FLOPS``."""
  flops = effective_flops(point.size)
  model_cfg, train_cfg = point_configs(point, vocab_size)
  train_fpt, eval_fpt = flops_per_token(model_cfg, train_cfg.seq_len)
  tokens = train_cfg.steps * train_cfg.batch_size * train_cfg.seq_len
  evals = train_cfg.steps // train_cfg.eval_every + 2
  eval_tokens = evals * train_cfg.eval_batches * train_cfg.batch_size
  eval_tokens *= train_cfg.seq_len
  seconds = COMPILE_S + (tokens * train_fpt + eval_tokens * eval_fpt) / flops
  if point.partition == SNR:  # the AdamW warm-up, and its compilation
    seconds += COMPILE_S + 0.1 * tokens * train_fpt / flops
  return {
    'seconds': seconds,
    'steps': train_cfg.steps,
    'tokens': tokens,
    'train_flops_per_token': train_fpt,
    'eval_flops_per_token': eval_fpt,
  }


def _thin(values, most: int = 300) -> list[list[float]]:
  """``[[step, mean loss], ...]``: a curve averaged down to ``most`` points."""
  values = np.asarray(values, dtype=np.float64)
  width = max(1, math.ceil(len(values) / most))
  out = []
  for start in range(0, len(values), width):
    window = values[start : start + width]
    out.append([start + len(window), float(window.mean())])
  return out


def _calibrate(point, model_cfg, train_cfg, corpus, log):
  """SlimAdam's SNR partition from the first 10% of an AdamW run."""
  warm_steps = max(1, train_cfg.steps // 10)
  warm_cfg = dataclasses.replace(
    train_cfg,
    stop_after=warm_steps,
    opt=dataclasses.replace(train_cfg.opt, name='adamw', partition='default'),
  )
  start = time.perf_counter()
  warm = train.train(
    model_cfg, warm_cfg, corpus, progress=False, print_fn=lambda _: None
  )
  nu = calibrate.adam_second_moments(warm.opt_state)
  decisions = calibrate.snr_decisions(nu)
  layouts = tuple((path_str(d.path), d.block) for d in decisions)
  record = {
    'warmup_optimizer': 'adamw',
    'steps': warm_steps,
    'wall_s': time.perf_counter() - start,
    'decisions': [
      {
        'path': path_str(d.path),
        'snr': [s if math.isfinite(s) else 'inf' for s in d.snrs],
        'block': repr(d.block),
      }
      for d in decisions
    ],
  }
  for d in decisions:
    log(f'    {d}')
  opt = dataclasses.replace(train_cfg.opt, layouts=layouts)
  return dataclasses.replace(train_cfg, opt=opt), record


def _progress_path(work_dir: str, point: Point) -> str:
  return os.path.join(work_dir, point.id, 'progress.json')


def progress(work_dir: str | None, point: Point) -> dict:
  """How far earlier calls took a point run in parts (step, wall, calls)."""
  if work_dir is None or not os.path.exists(_progress_path(work_dir, point)):
    return {'step': 0, 'wall_s': 0.0, 'calls': 0}
  with open(_progress_path(work_dir, point)) as f:
    return json.load(f)


def run_point(
  point: Point, corpus, log=print, work_dir=None, stop_after=None
) -> dict | None:
  """Trains one point; its record (plain JSON), or None if stopped early.

  With ``stop_after`` the run stops after that step and saves a checkpoint
  in ``<work_dir>/<id>/`` (the trainer's Orbax checkpoints); a later call
  with the same ``work_dir`` resumes it exactly where it stopped.
  """
  model_cfg, train_cfg = point_configs(point, corpus.tokenizer.vocab_size)
  planned = estimate(point, corpus.tokenizer.vocab_size)
  start = time.perf_counter()
  calibration = None
  if point.partition == SNR:
    train_cfg, calibration = _calibrate(
      point, model_cfg, train_cfg, corpus, log
    )
  checkpoints, before = None, progress(work_dir, point)
  if work_dir is not None and (stop_after is not None or before['step']):
    checkpoints = os.path.join(work_dir, point.id, 'checkpoints')
    train_cfg = dataclasses.replace(
      train_cfg, checkpoint_every=train_cfg.steps, stop_after=stop_after
    )
  diverged = None
  try:
    result = train.train(
      model_cfg,
      train_cfg,
      corpus,
      checkpoint_dir=checkpoints,
      resume=checkpoints is not None,
      progress=False,
      print_fn=lambda _: None,
    )
    metrics = result.metrics
  except train.NonFiniteLoss as error:
    diverged = {'step': error.step, 'loss': repr(error.loss)}
    metrics = None
  wall = time.perf_counter() - start + before['wall_s']
  if metrics is not None and metrics['stopped_early']:
    _write_json(
      _progress_path(work_dir, point),
      {'step': metrics['steps'], 'wall_s': wall, 'calls': before['calls'] + 1},
    )
    return None
  if checkpoints is not None:
    shutil.rmtree(os.path.join(work_dir, point.id), ignore_errors=True)
  adamw_cfg = dataclasses.replace(
    train_cfg.opt, name='adamw', partition='default', layouts=()
  )
  abstract = model.abstract_params(model_cfg)
  non_emb = non_embedding_params(model_cfg)
  total = model.param_count(abstract)
  tokens = train_cfg.steps * train_cfg.batch_size * train_cfg.seq_len
  record = {
    'id': point.id,
    'point': point._asdict(),
    'final_val_loss': metrics['final_val_loss'] if metrics else None,
    'final_train_loss': metrics['final_train_loss'] if metrics else None,
    'diverged': diverged,
    'val_curve': (
      [
        list(x)
        for x in zip(*[metrics['history'][k] for k in ('val_step', 'val_loss')])
      ]
      if metrics
      else []
    ),
    'train_curve': _thin(metrics['history']['train_loss']) if metrics else [],
    'steps': train_cfg.steps,
    'warmup_steps': train_cfg.opt.warmup_steps,
    'batch_size': train_cfg.batch_size,
    'seq_len': train_cfg.seq_len,
    'tokens': tokens,
    'params': {
      'total': total,
      'non_embedding': non_emb,
      'embedding_and_head': total - non_emb,
    },
    'tokens_per_total_param': tokens / total,
    'epochs': tokens / len(corpus.train_tokens),
    'optimizer_state_bytes': optimizer.state_bytes(
      train_cfg.opt, model_cfg, abstract
    ),
    'adamw_state_bytes': optimizer.state_bytes(adamw_cfg, model_cfg, abstract),
    'wall_s': wall,
    'device_s': wall,  # the trainer's default mesh: one device
    'calls': before['calls'] + 1,
    # Compilation, evaluation and the host's share: the wall time less the
    # training steps' (from the trainer's tokens/s).
    'overhead_s': (
      wall - tokens / metrics['tokens_per_second']
      if metrics and metrics['tokens_per_second']
      else None
    ),
    'tokens_per_second': metrics['tokens_per_second'] if metrics else None,
    'estimate': planned,
    'calibration': calibration,
    'model_config': dataclasses.asdict(model_cfg),
    'optimizer_config': {
      k: v
      for k, v in dataclasses.asdict(train_cfg.opt).items()
      if k != 'layouts'
    },
  }
  return record


# ----------------------------------------------------------------------------
# Results on disk


def _plain(value):
  """``value`` with non-finite floats as ``None`` (JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _write_json(path: str, record) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = f'{path}.{os.getpid()}.tmp'
  with open(partial, 'w') as f:
    json.dump(_plain(record), f, indent=1, allow_nan=False)
  os.replace(partial, path)


def load_points(folders) -> dict[str, dict]:
  """Every point record under ``<folder>/points/``, by id (later wins)."""
  out = {}
  for folder in folders:
    for path in sorted(glob.glob(os.path.join(folder, 'points', '*.json'))):
      with open(path) as f:
        record = json.load(f)
      out[record['id']] = record
  return out


def _loss(record) -> float:
  loss = record['final_val_loss']
  return math.inf if loss is None else loss


def _mean_by_lr(
  records, optimizer_name, size, tpp, partition='default', mu_dtype=FLOAT_MU
):
  """``{lr: [losses over seeds]}`` of the matching points."""
  out: dict[float, list[float]] = {}
  for r in records.values():
    p = r['point']
    key = (p['size'], p['tokens_per_param'], p['optimizer'], p['partition'])
    if key == (size, tpp, optimizer_name, partition) and (
      _mu_of(p) == mu_dtype
    ):
      out.setdefault(p['lr'], []).append(_loss(r))
  return out


def best_lr(records, optimizer_name, size, tpp, partition='default'):
  """The learning rate of the lowest mean final validation loss, or None."""
  return _best_of(
    _losses_by_lr_seed(records, optimizer_name, size, tpp, partition)
  )


def _best_of(losses):
  """The lr of ``{(lr, seed): loss}`` with the lowest sweep mean, or None."""
  means = _sweep_means(losses)
  return min(means, key=lambda lr: (means[lr], lr), default=None)


def _sweep_means(losses):
  """``{lr: mean loss}`` of ``{(lr, seed): loss}`` over the seeds every lr
  ran: a second seed at one lr only would move that lr's mean by the spread
  between seeds (1.5 % at 40m) and could pick the best lr by it. With no
  seed common to all lrs, each lr's mean over its own seeds."""
  seeds_at = {}
  for lr, seed in losses:
    seeds_at.setdefault(lr, set()).add(seed)
  common = set.intersection(*seeds_at.values()) if seeds_at else set()
  return {
    lr: float(np.mean([losses[lr, s] for s in sorted(common or seeds)]))
    for lr, seeds in seeds_at.items()
  }


def chunk_points(chunk: Chunk, records) -> list[Point]:
  """The chunk's points; ``'best'`` learning rates come from ``records``."""
  size = SIZES[chunk.size]
  points = []
  for partition in chunk.partitions:
    for opt in chunk.optimizers:
      if chunk.lrs == 'sweep':
        lrs = size.lrs
      elif chunk.lrs.startswith('lr='):
        lrs = tuple(float(lr) for lr in chunk.lrs[3:].split(','))
      else:
        source = 'adam_mini' if chunk.lrs == 'best-adam_mini' else opt
        lr = best_lr(records, source, chunk.size, short_horizon(chunk.size))
        if lr is None:
          raise SystemExit(
            f'chunk {chunk.name} needs the best learning rate of {source} at '
            f'the short horizon of {chunk.size}: run its sweep first and '
            'pass its results with --results'
          )
        lrs = (lr,)
      for lr in lrs:
        for seed in chunk.seeds:
          for mu in chunk.mu_dtypes:
            points.append(
              Point(
                chunk.size, chunk.tokens_per_param, opt, lr, seed, partition, mu
              )
            )
  return points


def environment() -> dict:
  device = jax.devices()[0]
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'tokenizers', 'numpy'):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {
    'device': f'{device.platform}: {device.device_kind}',
    'device_count': jax.device_count(),
    'python': platform.python_version(),
    'versions': versions,
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
  }


# ----------------------------------------------------------------------------
# Commands


def _vocab_for_plan(size: str) -> int:
  return SIZES[size].model.vocab_size


def plan(args) -> None:
  """Prints every chunk, its points and the estimated H200 seconds."""
  records = load_points([args.results])
  sessions: dict[str, float] = {}
  # The first chunk of a session reads and tokenizes the data; the others
  # find its ids in the cache on the machine's disk (if it stays warm).
  for chunk in CHUNKS.values():
    if chunk.size == 'smoke' and not args.smoke:
      continue
    try:
      points = chunk_points(chunk, records)
      known = True
    except SystemExit:  # best lrs not measured yet: plan at the sweep's middle
      middle = SIZES[chunk.size].lrs[len(SIZES[chunk.size].lrs) // 2]
      points = chunk_points(chunk._replace(lrs=f'lr={middle:g}'), records)
      known = False
    seconds = DATA_S['cold'] + sum(
      estimate(p, _vocab_for_plan(p.size))['seconds'] for p in points
    )
    warm = chunk.session in sessions
    sessions[chunk.session] = sessions.get(chunk.session, 0.0) + seconds
    if warm:
      sessions[chunk.session] -= DATA_S['cold'] - DATA_S['cached']
    note = '' if known else ' (lr: best of an earlier chunk)'
    flag = '' if seconds <= BUDGET_S else '  EXCEEDS ONE CALL'
    print(
      f'{chunk.name:<16} session {chunk.session:<6} {len(points):>2} points '
      f'~{seconds / 60:4.1f} min{note}{flag}'
    )
    if args.verbose:
      for p in points:
        e = estimate(p, _vocab_for_plan(p.size))
        print(
          f'    {p.id:<52} {e["steps"]:>6} steps {e["tokens"] / 1e6:7.1f}M '
          f'tokens {e["train_flops_per_token"] / 1e6:6.1f} MFLOP/token '
          f'~{e["seconds"]:5.0f} s'
        )
  print('\nper session (data cold in its first chunk, cached after):')
  for session, seconds in sessions.items():
    print(f'  {session:<6} ~{seconds / 60:.1f} min')


def run(args) -> None:
  """Runs the missing points of each chunk named, in turn, within one
  ``--budget-s`` (a device call); a size's data is read once."""
  started, call = time.perf_counter(), {'corpora': {}, 'pace': 1.0}
  for name in args.chunks:
    left = args.budget_s - (time.perf_counter() - started)
    _run_chunk(CHUNKS[name], args, left, call)


def _run_chunk(chunk: Chunk, args, budget_s: float, call: dict) -> None:
  """One chunk's missing points within ``budget_s``; ``call`` holds what
  the chunks of one call share (corpora by size, the pace seen)."""
  started = time.perf_counter()
  out = args.out
  records = load_points([args.results, out])
  points = chunk_points(chunk, records)
  if getattr(args, 'optimizer', None):
    points = [p for p in points if p.optimizer == args.optimizer]
  todo = [p for p in points if p.id not in records]
  env = environment()
  print(f'chunk {chunk.name}: {len(points)} points, {len(todo)} to run')
  print(f'device: {env["device"]} x{env["device_count"]}; {env["versions"]}')
  if not todo:
    return
  vocab = _vocab_for_plan(chunk.size)
  estimates = {p.id: estimate(p, vocab) for p in todo}
  for p in todo:
    e = estimates[p.id]
    print(
      f'  plan {p.id}: {e["steps"]} steps, {e["tokens"] / 1e6:.1f}M tokens, '
      f'{e["train_flops_per_token"] / 1e6:.1f} MFLOP/token -> ~{e["seconds"]:.0f} s '
      f'at {effective_flops(chunk.size) / 1e12:.0f} TFLOP/s'
    )
  total = sum(e['seconds'] for e in estimates.values())
  print(f'  plan total ~{total / 60:.1f} min + data; budget {budget_s:.0f} s')

  # ---- data (cached on this machine's disk between calls)
  data_cfg = study_data_config(chunk.size)
  data_start = time.perf_counter()
  if chunk.size not in call['corpora']:
    seed_cache(args.cache, [args.results, out])
    call['corpora'][chunk.size] = data.load(data_cfg, cache_dir=args.cache)
  corpus = call['corpora'][chunk.size]
  data_s = time.perf_counter() - data_start
  print(f'data: {corpus.description}; {corpus.details} ({data_s:.0f} s)')
  saved = getattr(corpus.tokenizer, 'path', None)
  if saved:  # bring the tokenizer back with the results, for later calls
    os.makedirs(out, exist_ok=True)
    shutil.copy(saved, os.path.join(out, os.path.basename(saved)))

  # Processes sharing the GPU (``--concurrent``) each run slower than the
  # plan's clock: points are planned at the slowest pace seen in this call.
  concurrent = getattr(args, 'concurrent', 1)
  done, skipped, partial = [], [], []
  for p in todo:
    left = budget_s - (time.perf_counter() - started)
    planned = estimates[p.id]
    step_s = call['pace'] * (planned['seconds'] - COMPILE_S) / planned['steps']
    reached = progress(args.work, p)['step']
    stop_after = None
    if COMPILE_S + (planned['steps'] - reached) * step_s > left:
      # Too long for what is left of this call: a point too long for any
      # call runs in parts, checkpointed on this machine; others wait.
      fits = int((left - COMPILE_S - SAVE_S) / step_s)
      if planned['seconds'] <= args.budget_s or fits < 1:
        skipped.append(p.id)
        continue
      stop_after = reached + fits
    record = run_point(p, corpus, work_dir=args.work, stop_after=stop_after)
    if record is None:
      partial.append(p.id)
      print(
        f'  part {p.id}: stopped after step {stop_after} of {planned["steps"]}'
      )
      continue
    call['pace'] = max(call['pace'], record['wall_s'] / planned['seconds'])
    record.update(chunk=chunk.name, environment=env, data={
      'config': dataclasses.asdict(data_cfg),
      'description': corpus.description,
      'details': corpus.details,
    })  # fmt: skip
    # The GPU was shared: its time is the wall time over the processes.
    record.update(concurrent=concurrent, device_s=record['wall_s'] / concurrent)
    _write_json(os.path.join(out, 'points', f'{p.id}.json'), record)
    done.append(p.id)
    loss = record['final_val_loss']
    loss = 'diverged' if loss is None else f'{loss:.4f}'
    print(
      f'  done {p.id}: val loss {loss}, {record["wall_s"]:.0f} s '
      f'(planned {record["estimate"]["seconds"]:.0f} s), '
      f'{(record["tokens_per_second"] or 0):,.0f} tokens/s',
      flush=True,
    )
  wall = time.perf_counter() - started
  log = {
    'chunk': chunk._asdict(),
    'environment': env,
    'points_run': done,
    'points_skipped_for_budget': skipped,
    'points_run_in_part': partial,
    'data_seconds': data_s,
    'wall_s': wall,
    'concurrent': concurrent,
    'device_s': wall / concurrent,  # one device, shared by the processes
    'planned_s': {p: estimates[p]['seconds'] for p in done},
  }
  stamp = env['date'][:19].replace(':', '')  # names the device tool returns
  name = f'{chunk.name}_{stamp}.json'
  _write_json(os.path.join(out, 'chunks', name), log)
  print(
    f'chunk {chunk.name}: ran {len(done)}, in part {len(partial)}, left '
    f'{len(skipped)}; {wall:.0f} s'
  )
  if skipped or partial:
    print(f'  run it again for: {", ".join(partial + skipped)}')


# ----------------------------------------------------------------------------
# Merge: tables, ratios, plot


def _group_table(records, size, tpp):
  """Per optimizer: the mean loss per lr, its best lr; the ratios."""
  table = {}
  for opt in OPTIMIZERS:
    by_lr = _mean_by_lr(records, opt, size, tpp)
    table[opt] = {
      f'{lr:g}': {
        'mean_val_loss': float(np.mean(v))
        if all(map(math.isfinite, v))
        else None,
        'val_losses': [x if math.isfinite(x) else None for x in v],
      }
      for lr, v in sorted(by_lr.items())
    }
  out = {'losses': table}
  best = {opt: best_lr(records, opt, size, tpp) for opt in OPTIMIZERS}
  if None in best.values():
    return out
  mean = {
    opt: {
      lr: float(np.mean(v))
      for lr, v in _mean_by_lr(records, opt, size, tpp).items()
    }
    for opt in OPTIMIZERS
  }
  out['best_lr'] = {opt: best[opt] for opt in OPTIMIZERS}
  out['best_lr_at_edge_of_sweep'] = {
    opt: len(mean[opt]) >= 3 and best[opt] in (min(mean[opt]), max(mean[opt]))
    for opt in OPTIMIZERS
  }
  losses = {
    opt: _losses_by_lr_seed(records, opt, size, tpp, 'default')
    for opt in OPTIMIZERS
  }
  ratio, seeds = _paired_ratio(losses, best['adam_mini'], best['adamw'])
  out['ratio_at_best_lr'], out['ratio_at_best_lr_seeds'] = ratio, seeds
  equal = {
    f'{lr:g}': _paired_ratio(losses, lr, lr)
    for lr in sorted(set(mean['adamw']) & set(mean['adam_mini']))
  }
  out['ratio_at_equal_lr'] = {lr: r for lr, (r, _) in equal.items()}
  out['ratio_at_equal_lr_seeds'] = {lr: s for lr, (_, s) in equal.items()}
  return out


def _paired_ratio(losses, mini_lr, adamw_lr):
  """Adam-mini's mean loss at ``mini_lr`` over AdamW's at ``adamw_lr``, both
  over the seeds the two have there (a seed only one optimizer ran would
  put the spread between seeds into the ratio), and those seeds."""
  seeds = sorted(
    {s for lr, s in losses['adam_mini'] if lr == mini_lr}
    & {s for lr, s in losses['adamw'] if lr == adamw_lr}
  )
  if not seeds:  # before the means: NumPy's mean of nothing warns
    return None, seeds
  mini = _mean_at(losses['adam_mini'], mini_lr, seeds)
  adamw = _mean_at(losses['adamw'], adamw_lr, seeds)
  if None in (mini, adamw):
    return None, seeds
  return mini / adamw, seeds


def _ratio(a, b):
  if not (math.isfinite(a) and math.isfinite(b)):
    return None
  return a / b


def _losses_by_lr_seed(records, optimizer_name, size, tpp, partition):
  """``{(lr, seed): loss}`` of the matching float32-m points."""
  return {
    (r['point']['lr'], r['point']['seed']): _loss(r)
    for r in records.values()
    if (r['point']['size'], r['point']['tokens_per_param']) == (size, tpp)
    and r['point']['optimizer'] == optimizer_name
    and r['point']['partition'] == partition
    and _mu_of(r['point']) == FLOAT_MU
  }  # fmt: skip


def _mean_at(losses, lr, seeds):
  """The mean loss at ``lr`` over exactly ``seeds``; None if one is missing."""
  values = [losses.get((lr, s)) for s in seeds]
  if None in values or not all(map(math.isfinite, values)):
    return None
  return float(np.mean(values))


def _partition_table(records, size, tpp):
  """Each Adam-mini partition (the default too), against AdamW and the
  default partition over the same seeds (seeds differ by more than the
  ablations: a ratio across seeds would measure the seeds)."""
  adamw = _losses_by_lr_seed(records, 'adamw', size, tpp, 'default')
  default = _losses_by_lr_seed(records, 'adam_mini', size, tpp, 'default')
  best_adamw = best_lr(records, 'adamw', size, tpp)
  out = {}
  names = sorted({
    r['point']['partition']
    for r in records.values()
    if r['point']['size'] == size and r['point']['tokens_per_param'] == tpp
    and r['point']['optimizer'] == 'adam_mini'
    and _mu_of(r['point']) == FLOAT_MU
  })  # fmt: skip
  for name in names:
    losses = _losses_by_lr_seed(records, 'adam_mini', size, tpp, name)
    rows = {}
    for lr in sorted({lr for lr, _ in losses}):
      seeds = sorted(s for at_lr, s in losses if at_lr == lr)
      loss = _mean_at(losses, lr, seeds)
      at = {
        'adamw_same_lr': _mean_at(adamw, lr, seeds),
        'adamw_best': _mean_at(adamw, best_adamw, seeds),
        'default_same_lr': _mean_at(default, lr, seeds),
      }
      rows[f'{lr:g}'] = {
        'seeds': seeds,
        'mean_val_loss': loss,
        **{
          f'ratio_to_{k}': _ratio(loss, v) if None not in (loss, v) else None
          for k, v in at.items()
        },
      }
    example = next(
      r for r in records.values()
      if r['point']['partition'] == name and r['point']['size'] == size
      and r['point']['optimizer'] == 'adam_mini'
      and _mu_of(r['point']) == FLOAT_MU
    )  # fmt: skip
    best = _best_of(losses)
    best = f'{best:g}' if best and rows[f'{best:g}']['mean_val_loss'] else None
    out[name] = {
      'by_lr': rows,
      'best_lr': float(best) if best else None,
      'ratio_at_best_lr_to_adamw_best': (
        rows[best]['ratio_to_adamw_best'] if best else None
      ),
      'state_bytes': example['optimizer_state_bytes'],
      'state_ratio_to_adamw': example['optimizer_state_bytes']
      / example['adamw_state_bytes'],
    }
  return out


def _moment_table(records, size, tpp):
  """Each quantized first moment against float32 m's point of the same
  learning rate and seed (default partition): the issue-14 ratios."""
  floats = {
    (r['point']['lr'], r['point']['seed']): r
    for r in records.values()
    if (r['point']['size'], r['point']['tokens_per_param']) == (size, tpp)
    and r['point']['optimizer'] == 'adam_mini'
    and r['point']['partition'] == 'default'
    and _mu_of(r['point']) == FLOAT_MU
  }  # fmt: skip
  out = {}
  for r in sorted(records.values(), key=lambda r: r['id']):
    p = r['point']
    if (p['size'], p['tokens_per_param']) != (size, tpp) or (
      _mu_of(p) == FLOAT_MU or p['partition'] != 'default'
    ):
      continue
    ref = floats.get((p['lr'], p['seed']))
    row = out.setdefault(_mu_of(p), {'points': []})
    row['points'].append({
      'lr': p['lr'],
      'seed': p['seed'],
      'val_loss': r['final_val_loss'],
      'float32_val_loss': ref['final_val_loss'] if ref else None,
      'ratio_to_float32': (
        _ratio(_loss(r), _loss(ref)) if ref else None
      ),
    })  # fmt: skip
    row['state_bytes'] = r['optimizer_state_bytes']
    row['state_ratio_to_adamw'] = (
      r['optimizer_state_bytes'] / r['adamw_state_bytes']
    )
    if ref:
      row['state_ratio_to_float32'] = (
        r['optimizer_state_bytes'] / ref['optimizer_state_bytes']
      )
  for row in out.values():
    ratios = [x['ratio_to_float32'] for x in row['points']]
    ratios = [x for x in ratios if x is not None]
    row['max_ratio_to_float32'] = max(ratios) if ratios else None
  return out


def summarize(records, chunk_logs) -> dict:
  groups = sorted({
    (r['point']['size'], r['point']['tokens_per_param']) for r in records.values()
  })  # fmt: skip
  summary = {
    'description': (
      'Adam-mini against AdamW: final validation loss (nats per BPE token, '
      'fixed held-out set) per model size, tokens per non-embedding '
      'parameter, optimizer and learning rate; ratios are Adam-mini / AdamW '
      '(below 1: Adam-mini lower). See benchmarks/convergence.py and '
      'BENCHMARKS.md.'
    ),
    'groups': {},
    'device_seconds': {
      'points': sum(r['device_s'] for r in records.values()),
      'calls': sum(c['device_s'] for c in chunk_logs),
      'calls_count': len(chunk_logs),
    },
    'environments': sorted(
      {
        json.dumps(
          {k: r['environment'][k] for k in ('device', 'versions')},
          sort_keys=True,
        )
        for r in records.values()
        if 'environment' in r
      }
    ),  # fmt: skip
    'dates': sorted(
      {
        r['environment']['date'][:10]
        for r in records.values()
        if 'environment' in r
      }
    ),  # fmt: skip
    'points': sorted(records),
  }
  for size, tpp in groups:
    group = _group_table(records, size, tpp)
    partitions = _partition_table(records, size, tpp)
    partitions.pop('default', None)
    if partitions:
      group['partitions'] = partitions
    moments = _moment_table(records, size, tpp)
    if moments:
      group['quantized_m'] = moments
    example = next(
      r for r in records.values()
      if (r['point']['size'], r['point']['tokens_per_param']) == (size, tpp)
    )  # fmt: skip
    group.update(
      steps=example['steps'],
      tokens=example['tokens'],
      params=example['params'],
      epochs=example['epochs'],
      device_seconds=sum(
        r['device_s'] for r in records.values()
        if (r['point']['size'], r['point']['tokens_per_param']) == (size, tpp)
      ),
    )  # fmt: skip
    summary['groups'][f'{size} tpp={tpp:g}'] = group
  return summary


def plot(records, summary, path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  groups = list(summary['groups'].items())
  columns = 3 if any('partitions' in g for _, g in groups) else 2
  fig, axes = plt.subplots(
    len(groups),
    columns,
    figsize=(6 * columns, 3.8 * len(groups)),
    squeeze=False,
  )
  colors = {'adamw': 'C0', 'adam_mini': 'C1'}
  for (name, group), row in zip(groups, axes):
    sweep_ax, curve_ax = row[:2]
    size, tpp = name.split(' tpp=')
    tpp = float(tpp)
    if columns == 3:
      _plot_partitions(row[2], records, size, tpp, group.get('partitions', {}))
    for opt in OPTIMIZERS:
      by_lr = _mean_by_lr(records, opt, size, tpp)
      finite = {lr: v for lr, v in by_lr.items() if all(map(math.isfinite, v))}
      for lr, losses in finite.items():
        sweep_ax.plot(
          [lr] * len(losses), losses, '.', color=colors[opt], alpha=0.5
        )
      # The line joins the means the best lr is chosen from.
      means = _sweep_means(
        _losses_by_lr_seed(records, opt, size, tpp, 'default')
      )
      lrs = sorted(lr for lr in means if math.isfinite(means[lr]))
      if lrs:
        sweep_ax.plot(
          lrs, [means[lr] for lr in lrs], 'o-', color=colors[opt], label=opt
        )
      best = group.get('best_lr', {}).get(opt)
      for r in records.values():
        p = r['point']
        if (p['size'], p['tokens_per_param'], p['optimizer'], p['partition'], p['lr']) == (
          size, tpp, opt, 'default', best
        ) and _mu_of(p) == FLOAT_MU and r['val_curve']:  # fmt: skip
          steps, losses = (
            zip(*r['val_curve'][1:]) if len(r['val_curve']) > 1 else ((), ())
          )
          curve_ax.plot(
            steps, losses, '-', color=colors[opt], alpha=0.9 if p['seed'] == 0 else 0.4,
            label=f'{opt} lr {best:g} seed {p["seed"]} ({r["final_val_loss"]:.4f})',
          )  # fmt: skip
    ratio = group.get('ratio_at_best_lr')
    title = (
      f'{name}: {group["steps"]} steps, {group["tokens"] / 1e6:.0f}M tokens'
    )
    if ratio:
      title += f'\nAdam-mini/AdamW at best lr {ratio:.4f}'
    sweep_ax.set(
      xscale='log',
      xlabel='peak learning rate',
      ylabel='final val loss',
      title=title,
    )
    # The measured lrs as the ticks: log-scale minor labels overlap.
    lrs = sorted({lr for line in sweep_ax.lines for lr in line.get_xdata()})
    sweep_ax.set_xticks(lrs, [f'{lr:g}' for lr in lrs])
    sweep_ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    curve_ax.set(
      xlabel='step', ylabel='val loss', title="at each optimizer's best lr"
    )
    for ax in (sweep_ax, curve_ax):
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    if curve_ax.lines:
      finals = [line.get_ydata()[-1] for line in curve_ax.lines]
      curve_ax.set_ylim(min(finals) * 0.98, max(finals) * 1.25)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_partitions(ax, records, size, tpp, partitions) -> None:
  """Each partition's loss at its best lr / AdamW's best (same seeds), with
  its state; on each bar, the default's ratio over that bar's seeds (one
  line across seeds would set a seed-0 ablation against a two-seed mean)."""
  if not partitions:
    ax.axis('off')
    return
  rows = sorted(
    (row['ratio_at_best_lr_to_adamw_best'] or math.nan, name, row)
    for name, row in partitions.items()
  )
  adamw = _losses_by_lr_seed(records, 'adamw', size, tpp, 'default')
  mini = _losses_by_lr_seed(records, 'adam_mini', size, tpp, 'default')
  best = {
    opt: best_lr(records, opt, size, tpp) for opt in ('adamw', 'adam_mini')
  }
  labels, defaults = [], []
  for _, name, row in rows:
    seeds = (
      row['by_lr'][f'{row["best_lr"]:g}']['seeds'] if row['best_lr'] else []
    )
    labels.append(
      f'{name} (state {row["state_ratio_to_adamw"]:.3f}; '
      f'seeds {",".join(map(str, seeds))})'
    )
    default = _mean_at(mini, best['adam_mini'], seeds) if seeds else None
    reference = _mean_at(adamw, best['adamw'], seeds) if seeds else None
    defaults.append(default / reference if default and reference else math.nan)
  ratios = [ratio for ratio, _, _ in rows]
  ax.barh(labels, [r - 1 for r in ratios], left=1, color='C1')
  ax.axvline(1, color='C0', lw=1, label='AdamW')
  ax.plot(
    defaults, range(len(rows)), ls='none', marker='|', ms=12, mew=2,
    color='k', label='default, same seeds',
  )  # fmt: skip
  ax.set_ylim(-1.5, len(rows) - 0.5)  # an empty row below: the legend's
  ax.legend(fontsize=7, loc='lower right')
  ax.margins(x=0.1)
  ax.tick_params(axis='y', labelsize=7)
  ax.set(
    xlabel='val loss / AdamW best, same seeds',
    title='Adam-mini partitions (at their best lr)',
  )
  ax.grid(alpha=0.3, axis='x')


def merge(args) -> None:
  """Copies chunk outputs into ``--to`` and rebuilds the summary and plot."""
  target = args.to
  for folder in args.folders:
    for kind in ('points', 'chunks'):
      for path in glob.glob(os.path.join(folder, kind, '*.json')):
        os.makedirs(os.path.join(target, kind), exist_ok=True)
        shutil.copy(path, os.path.join(target, kind, os.path.basename(path)))
    for path in glob.glob(os.path.join(folder, 'bpe_*.json')):
      shutil.copy(path, os.path.join(target, os.path.basename(path)))
  records = load_points([target])
  chunk_logs = []
  for path in sorted(glob.glob(os.path.join(target, 'chunks', '*.json'))):
    with open(path) as f:
      chunk_logs.append(json.load(f))
  summary = summarize(records, chunk_logs)
  _write_json(args.summary, summary)
  plot(records, summary, args.png)
  print(f'{len(records)} points -> {args.summary}, {args.png}')
  for name, group in summary['groups'].items():
    print(
      f'{name}: best lr {group.get("best_lr")}, ratio at best lr {group.get("ratio_at_best_lr")}, at equal lr {group.get("ratio_at_equal_lr")}'
    )
    for part, row in group.get('partitions', {}).items():
      best = (
        row['by_lr'].get(f'{row["best_lr"]:g}', {}) if row['best_lr'] else {}
      )
      print(
        f'    {part}: x AdamW {_fmt(row["ratio_at_best_lr_to_adamw_best"])}, '
        f'x default {_fmt(best.get("ratio_to_default_same_lr"))} '
        f'(seeds {best.get("seeds")}), state {row["state_ratio_to_adamw"]:.4f} of AdamW'
      )
    for mu, row in group.get('quantized_m', {}).items():
      print(
        f'    m {mu}: x float32 m {row["max_ratio_to_float32"]}, state {row["state_ratio_to_adamw"]:.4f} of AdamW'
      )


def _fmt(ratio) -> str:
  return 'n/a' if ratio is None else f'{ratio:.4f}'


SMOKE_CHUNKS = ('smoke-short', 'smoke-snr', 'smoke-long')


def smoke(args) -> None:
  """The smoke chunks, then a merge: every code path on a CPU."""
  out = args.out
  for name in args.chunks or SMOKE_CHUNKS:
    run(argparse.Namespace(
      chunks=[name], out=out, results=out, cache=os.path.join(out, 'cache'),
      work=os.path.join(out, 'work'), budget_s=math.inf,
    ))  # fmt: skip
  merge(argparse.Namespace(
    folders=[out], to=os.path.join(out, 'merged'),
    summary=os.path.join(out, 'convergence.json'),
    png=os.path.join(out, 'convergence.png'),
  ))  # fmt: skip


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  p = commands.add_parser('plan', help='list the chunks and their estimates')
  p.add_argument('--results', default=RESULTS)
  p.add_argument('--verbose', '-v', action='store_true')
  p.add_argument('--smoke', action='store_true', help='the smoke chunks too')
  p = commands.add_parser('run', help='run chunks, in turn, in one call')
  p.add_argument('chunks', nargs='+', choices=sorted(CHUNKS), metavar='chunk')
  p.add_argument('--out', required=True, help='where its results go ($OUT)')
  p.add_argument(
    '--results', default=RESULTS, help='earlier results (best lrs, done points)'
  )
  p.add_argument('--cache', default=DEFAULT_CACHE, help='tokenizer and ids')
  p.add_argument(
    '--work', default=DEFAULT_WORK, help='checkpoints of points run in parts'
  )
  p.add_argument(
    '--optimizer',
    choices=OPTIMIZERS,
    help="only this optimizer's points (one process per GPU: both at once)",
  )
  p.add_argument('--budget-s', type=float, default=BUDGET_S)
  p.add_argument(
    '--concurrent',
    type=int,
    default=1,
    help='chunks run at once on this GPU, one process each (recorded; each '
    "point's device time is its wall time over this)",
  )
  p = commands.add_parser('merge', help='combine chunk outputs')
  p.add_argument('folders', nargs='+')
  p.add_argument('--to', default=RESULTS)
  p.add_argument('--summary', default=SUMMARY_JSON)
  p.add_argument('--png', default=SUMMARY_PNG)
  p = commands.add_parser('smoke', help='the whole study, tiny, on a CPU')
  p.add_argument('--out', required=True)
  p.add_argument('chunks', nargs='*', choices=[[], *SMOKE_CHUNKS])
  args = parser.parse_args(argv)
  {'plan': plan, 'run': run, 'merge': merge, 'smoke': smoke}[args.command](args)


if __name__ == '__main__':
  main()
