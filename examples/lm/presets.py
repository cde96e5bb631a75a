"""Named settings: a model shape with the training settings that suit it.

``PRESETS`` maps a name to a ``Preset(description, model, train)``;
``from_preset`` applies overrides to one and derives what depends on the
number of steps (the schedule's length and the warmup).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from examples.lm.config import (
  DataConfig,
  ModelConfig,
  OptimizerConfig,
  TrainConfig,
  UsageError,
  check_sequence,
)


class Preset(NamedTuple):
  description: str
  model: ModelConfig
  train: TrainConfig


def _preset(description: str, model: ModelConfig, **train) -> Preset:
  opt_fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
  opt = {k: train.pop(k) for k in list(train) if k in opt_fields}
  opt['schedule_steps'] = train['steps']
  train_cfg = TrainConfig(**train, opt=OptimizerConfig(**opt))
  return Preset(description, model, train_cfg)


# Every preset uses a standard initialisation: weights N(0, 0.02), as GPT-2
# and Llama do (the projections into the residual stream scaled by
# 1/sqrt(2 * layers), as GPT-2 does), and warms up for 10% of its steps.
#
# The vocabulary is the model's ``vocab_size``: 256 means the byte
# tokenizer, more a byte-level BPE of that size trained on the run's data
# (``data_config``). ``tiny`` and ``tiny-gpt2`` keep bytes: they are CPU
# demos, and at d=128 a BPE's 8k-row embedding and LM head would be six
# times the rest of the model and its LM head alone three times the rest's
# FLOPs per token (on 2 CPU cores AdamW went from 7.2k to 2.2k tokens/s).
# ``small`` and the study's models (d=384-768) take 16k, where the LM head
# is a quarter to a third of the FLOPs (XLA's count: 109 MFLOP/token at
# d=384); the GPU presets 32k (32000 for Llama-2, its own size), a fraction
# of the body at d>=768.
_cpu = dict(steps=800, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=80)
_gpu = dict(steps=5000, batch_size=32, eval_every=250, warmup_steps=500)
# The convergence study (benchmarks/convergence.py): Llama with GQA (3 query
# heads per KV head, 64 per head), batches of 128 x 512 tokens; ``steps``
# here is the short horizon, 4 tokens per non-embedding parameter, at the
# middle of the study's learning-rate sweep.
_study = dict(batch_size=128, seq_len=512, lr=2e-3, eval_every=50)
PRESETS: dict[str, Preset] = {
  'tiny': _preset(
    '~0.4M-param Llama for CPUs, byte vocabulary',
    ModelConfig(
      'llama', d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
      d_ff=344,
    ),
    **_cpu, eval_every=50,
  ),
  'tiny-gpt2': _preset(
    '~0.5M-param GPT-2 for CPUs, byte vocabulary',
    ModelConfig(
      'gpt2', d_model=128, num_layers=2, num_heads=4, d_ff=512,
      max_seq_len=1024,
    ),
    **_cpu, eval_every=50,
  ),
  'small': _preset(
    '~25M-param Llama body, 16k BPE, for a GPU or a patient CPU',
    ModelConfig(
      'llama', vocab_size=16384, d_model=512, num_layers=8, num_heads=8,
      num_kv_heads=4, d_ff=1376,
    ),
    steps=2000, batch_size=32, seq_len=512, lr=1e-3, warmup_steps=200,
    eval_every=200,
  ),
  'study-10m': _preset(
    '9.4M non-embedding params, Llama GQA, 16k BPE (convergence study)',
    ModelConfig(
      'llama', vocab_size=16384, d_model=384, num_layers=6, num_heads=6,
      num_kv_heads=2, d_ff=1024,
    ),
    **_study, steps=576, warmup_steps=58,
  ),
  'study-40m': _preset(
    '37.8M non-embedding params, Llama GQA, 16k BPE (convergence study)',
    ModelConfig(
      'llama', vocab_size=16384, d_model=768, num_layers=6, num_heads=12,
      num_kv_heads=4, d_ff=2048,
    ),
    **_study, steps=2305, warmup_steps=230,
  ),
  'gpt2-124m': _preset(
    'GPT-2 small body, 32k BPE',
    ModelConfig(
      'gpt2', vocab_size=32768, d_model=768, num_layers=12, num_heads=12,
      d_ff=3072, max_seq_len=1024,
    ),
    **_gpu, seq_len=1024, lr=6e-4,
  ),
  'llama-1b': _preset(
    'Llama-3.2-1B body, 32k BPE',
    ModelConfig(
      'llama', vocab_size=32768, d_model=2048, num_layers=16, num_heads=32,
      num_kv_heads=8, d_ff=8192, rope_theta=500000.0,
    ),
    **_gpu, seq_len=2048, lr=3e-4,
  ),
  'llama2-7b': _preset(
    'Llama-2-7B body, 32k BPE; not yet trained end to end',
    ModelConfig(
      'llama', vocab_size=32000, d_model=4096, num_layers=32, num_heads=32,
      num_kv_heads=32, d_ff=11008,
    ),
    **{**_gpu, 'batch_size': 16}, seq_len=4096, lr=3e-4,
  ),
}  # fmt: skip

# ModelConfig fields a preset's model takes from outside.
_MODEL_OVERRIDES = {'dtype', 'remat', 'vocab_size'}


def from_preset(
  preset: str = 'tiny', /, **overrides
) -> tuple[ModelConfig, TrainConfig]:
  """A preset with some fields replaced: ``from_preset('tiny', steps=40)``.

  ``overrides`` name fields of ``TrainConfig``, ``OptimizerConfig`` (the
  optimizer is ``name='adamw'``) or, for ``dtype``, ``remat`` and
  ``vocab_size``, ``ModelConfig``. Unless given,
  ``schedule_steps`` is ``steps`` and ``warmup_steps`` is 10% of ``steps``,
  at most the preset's.
  """
  if preset not in PRESETS:
    raise UsageError(
      f'unknown preset {preset!r}; expected one of {sorted(PRESETS)}'
    )
  _, model_cfg, train_cfg = PRESETS[preset]
  opt_fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
  train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {'opt'}
  unknown = set(overrides) - opt_fields - train_fields - _MODEL_OVERRIDES
  if unknown:
    raise UsageError(f'unknown settings {sorted(unknown)}')
  pick = lambda fields: {k: v for k, v in overrides.items() if k in fields}
  model_cfg = dataclasses.replace(model_cfg, **pick(_MODEL_OVERRIDES))
  preset_warmup = train_cfg.opt.warmup_steps
  train_cfg = dataclasses.replace(train_cfg, **pick(train_fields))
  opt = {
    'schedule_steps': train_cfg.steps,
    'warmup_steps': min(preset_warmup, train_cfg.steps // 10),
    **pick(opt_fields),
  }
  train_cfg = dataclasses.replace(
    train_cfg, opt=dataclasses.replace(train_cfg.opt, **opt)
  )
  check_sequence(model_cfg, train_cfg)
  return model_cfg, train_cfg


def data_config(preset: str = 'tiny', /, **overrides) -> DataConfig:
  """The preset's tokenizer and vocabulary, with ``DataConfig`` overrides.

  A preset whose model has 256 ids reads bytes; any other trains a BPE of
  its ``vocab_size``. ``tokenizer`` or ``vocab_size`` among ``overrides``
  replace the preset's (a BPE given no size takes the preset's, or the
  default 16384 on a byte preset).

  >>> data_config('small').tokenizer, data_config('small').vocab_size
  ('bpe', 16384)
  >>> data_config('tiny').tokenizer
  'byte'
  >>> data_config('tiny', tokenizer='bpe', vocab_size=8192).vocab_size
  8192
  """
  if preset not in PRESETS:
    raise UsageError(
      f'unknown preset {preset!r}; expected one of {sorted(PRESETS)}'
    )
  vocab = PRESETS[preset].model.vocab_size
  preset_tokenizer = 'byte' if vocab == 256 else 'bpe'
  tokenizer = overrides.pop('tokenizer', None) or preset_tokenizer
  if tokenizer == 'bpe' and overrides.get('vocab_size') is None:
    overrides['vocab_size'] = vocab if preset_tokenizer == 'bpe' else None
  return DataConfig(tokenizer=tokenizer, **overrides)
