"""The optimizers and their schedule, built from one ``OptimizerConfig``.

AdamW and Adam-mini get the same hyper-parameters, the same warmup + cosine
schedule, the same global-norm clipping and the same weight-decay mask
(matrices and embeddings, not norm scales or biases), so a comparison of the
two differs only in the second moment.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import optax

import optax_adam_mini
from examples.lm import config, partitions
from examples.lm.config import ModelConfig, OptimizerConfig
from optax_adam_mini.report import tree_bytes


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Linear warmup to ``lr``, then cosine down to ``lr * min_lr_ratio``.

  The cosine ends at step ``schedule_steps``; later steps keep its final
  value.
  """
  total = cfg.schedule_steps
  warmup = min(cfg.warmup_steps, max(total - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.lr,
    warmup_steps=warmup,
    decay_steps=max(total, warmup + 1),
    end_value=cfg.lr * cfg.min_lr_ratio,
  )


# ``--mu-dtype`` names -> ``adam_mini``'s ``mu_dtype`` (None: the params').
_MU_DTYPES = {
  'float32': None,
  'bfloat16': jnp.bfloat16,
  'int8': jnp.int8,
  'int4': jnp.int4,
}
assert tuple(_MU_DTYPES) == config.MU_DTYPES


def mu_dtype(cfg: OptimizerConfig):
  """Adam-mini's ``mu_dtype`` from ``cfg.mu_dtype`` (a name or a
  ``MomentQuantization``, passed on as it is).

  >>> from examples.lm.config import OptimizerConfig
  >>> mu_dtype(OptimizerConfig(mu_dtype='int8'))
  <class 'jax.numpy.int8'>
  """
  if isinstance(cfg.mu_dtype, str):
    return _MU_DTYPES[cfg.mu_dtype]
  return cfg.mu_dtype


def _partition_kwargs(cfg: OptimizerConfig, model_cfg: ModelConfig) -> dict:
  """``adam_mini``'s block options, from ``--partition`` (``partitions``)."""
  return partitions.adam_mini_kwargs(cfg, model_cfg)


def make_optimizer(
  cfg: OptimizerConfig, model_cfg: ModelConfig, params
) -> optax.GradientTransformation:
  """Clipping, then ``adam_mini`` or ``optax.adamw``; ``params`` may be shapes."""
  schedule = learning_rate_schedule(cfg)
  mask = optax_adam_mini.default_weight_decay_mask(params)
  hyper = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  if cfg.name == 'adamw':
    inner = optax.adamw(schedule, mask=mask, **hyper)
  else:
    inner = optax_adam_mini.adam_mini(
      schedule,
      mask=mask,
      **hyper,
      mu_dtype=mu_dtype(cfg),
      **_partition_kwargs(cfg, model_cfg),
    )
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), inner)


def state_bytes(cfg: OptimizerConfig, model_cfg: ModelConfig, params) -> int:
  """Bytes of the whole optimizer state (clipping and schedule included)."""
  tx = make_optimizer(cfg, model_cfg, params)
  return tree_bytes(jax.eval_shape(tx.init, params))


def partition_report(
  cfg: OptimizerConfig, model_cfg: ModelConfig, params
) -> str:
  """The library's per-leaf table of Adam-mini blocks and state bytes.

  The bytes are those of this run's optimizers, AdamW's and Adam-mini's, as
  ``metrics.json`` and ``summary.json`` give them.
  """
  with warnings.catch_warnings():
    if model_cfg.arch == 'gpt2':
      # GPT-2 ties its output layer to `wte`: no separate LM head to find.
      warnings.filterwarnings('ignore', message='.*recognised as its output')
    report = optax_adam_mini.partition_report(
      params,
      mu_dtype=mu_dtype(cfg) if cfg.name == 'adam_mini' else None,
      **_partition_kwargs(cfg, model_cfg),
    )
  adamw = dataclasses.replace(cfg, name='adamw')
  report = report._replace(
    state_bytes=state_bytes(cfg, model_cfg, params),
    adamw_state_bytes=state_bytes(adamw, model_cfg, params),
  )
  text = str(report) + (
    '\n(state bytes of this run: clipping and the schedule included)'
  )
  if model_cfg.arch == 'gpt2':
    text += '\n(gpt2 ties its output layer to wte/embedding: no lm_head leaf)'
  return text
