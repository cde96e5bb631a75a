"""Named settings: a model shape with the training settings that suit it.

``PRESETS`` maps a name to a ``Preset(description, model, train)``;
``from_preset`` applies overrides to one and derives what depends on the
number of steps (the schedule's length and the warmup).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from examples.lm.config import (
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


# Every preset warms up for
# 10% of its steps. ``tiny``: both optimizers in about 4 minutes on 2 CPU
# cores; the larger init (0.06, not 0.02) matters at this width: both
# optimizers learn much faster with it.
_cpu = dict(steps=800, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=80)
_gpu = dict(steps=5000, batch_size=32, eval_every=250, warmup_steps=500)
PRESETS: dict[str, Preset] = {
  'tiny': _preset(
    '~0.4M-param Llama for CPUs',
    ModelConfig(
      'llama', d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
      d_ff=344, init_std=0.06,
    ),
    **_cpu, eval_every=50,
  ),
  'tiny-gpt2': _preset(
    '~0.5M-param GPT-2 for CPUs',
    ModelConfig(
      'gpt2', d_model=128, num_layers=2, num_heads=4, d_ff=512,
      max_seq_len=1024, init_std=0.06,
    ),
    **_cpu, eval_every=50,
  ),
  'small': _preset(
    '~25M-param Llama, for a GPU or a patient CPU',
    ModelConfig(
      'llama', d_model=512, num_layers=8, num_heads=8, num_kv_heads=4,
      d_ff=1376,
    ),
    steps=2000, batch_size=32, seq_len=512, lr=1e-3, warmup_steps=200,
    eval_every=200,
  ),
  'gpt2-124m': _preset(
    'GPT-2 small body, byte vocabulary',
    ModelConfig(
      'gpt2', d_model=768, num_layers=12, num_heads=12, d_ff=3072,
      max_seq_len=1024,
    ),
    **_gpu, seq_len=1024, lr=6e-4,
  ),
  'llama-1b': _preset(
    'Llama-3.2-1B body, byte vocabulary',
    ModelConfig(
      'llama', d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
      d_ff=8192, rope_theta=500000.0,
    ),
    **_gpu, seq_len=2048, lr=3e-4,
  ),
  'llama2-7b': _preset(
    'Llama-2-7B body, byte vocabulary; not yet trained end to end',
    ModelConfig(
      'llama', d_model=4096, num_layers=32, num_heads=32, num_kv_heads=32,
      d_ff=11008,
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
