"""The train step: built once per configuration, compiled ahead of time.

``compile_run`` makes the optimizer, lays the weights, the optimizer state
and the batch out on the mesh (``sharding``), and compiles
``make_train_step`` for one batch shape. It asks the compiled step how much
memory it needs and refuses, with one line naming the flags, a step that
needs more than a device has, before anything is allocated.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import optax_adam_mini
from examples.lm import model, optimizer, sharding
from examples.lm.config import ModelConfig, OptimizerConfig, UsageError
from examples.lm.report import format_bytes


def make_train_step(model_cfg: ModelConfig, tx: optax.GradientTransformation):
  """``(params, opt_state, batch) -> (params, opt_state, loss)``, pure."""
  loss_fn = functools.partial(model.loss, model_cfg)

  def train_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


class Compiled(NamedTuple):
  """A configuration's optimizer, shardings and compiled functions."""

  tx: optax.GradientTransformation
  batch_sharding: jax.sharding.NamedSharding
  init_state: Any  # params -> optimizer state, laid out like the params
  train_step: Any  # make_train_step, compiled for one batch shape
  eval_step: Any  # (params, batch) -> loss


def _device_memory(mesh) -> int | None:
  """Bytes one device of ``mesh`` can hold; CPU devices share the host's."""
  stats = mesh.devices.flat[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return stats['bytes_limit']
  try:
    host = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError):
    return None
  return host // mesh.devices.size


def _attention_logits_bytes(model_cfg: ModelConfig, mesh, batch_size, seq_len):
  """A lower bound on a step's memory: one layer's float32 attention logits.

  ``jax.nn.dot_product_attention`` (its XLA implementation) materialises the
  ``(B, H, T, T)`` logits in float32; the batch is split over ``data`` and
  ``fsdp``, the heads at most over ``tp``.
  """
  batch = batch_size // math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  heads = model_cfg.num_heads
  if heads % mesh.shape['tp'] == 0:
    heads //= mesh.shape['tp']
  return batch * heads * seq_len * seq_len * 4


def _refuse_if_too_large(need: int, mesh, batch_size: int, seq_len: int):
  limit = _device_memory(mesh)
  if limit is not None and need > limit:
    platform = mesh.devices.flat[0].platform
    raise UsageError(
      f'--seq-len {seq_len} with --batch-size {batch_size} needs '
      f'{format_bytes(need)} per device for one training step, more than a '
      f'{platform} device has ({format_bytes(limit)}); use a shorter '
      '--seq-len or a smaller --batch-size'
    )


def _compiled_step_bytes(compiled) -> int | None:
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )


@functools.lru_cache(maxsize=8)
def compile_run(
  model_cfg: ModelConfig,
  opt_cfg: OptimizerConfig,
  mesh: jax.sharding.Mesh,
  batch_size: int,
  seq_len: int,
) -> Compiled:
  """Builds and compiles everything a run needs; refuses what does not fit.

  A step whose attention logits alone overflow a device is refused before
  compiling (XLA takes long to compile very long sequences); any other is
  refused after, from what the compiled step says it needs.
  """
  _refuse_if_too_large(
    _attention_logits_bytes(model_cfg, mesh, batch_size, seq_len),
    mesh,
    batch_size,
    seq_len,
  )
  abstract = model.abstract_params(model_cfg)
  param_shardings = sharding.param_shardings(abstract, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  tx = optimizer.make_optimizer(opt_cfg, model_cfg, abstract)
  # The library derives the state's layout from the weights': mu like its
  # weight, v on the mesh axes of the axes its blocks keep.
  state_shardings = optax_adam_mini.state_shardings(
    tx, abstract, param_shardings
  )
  step = jax.jit(
    make_train_step(model_cfg, tx),
    in_shardings=(param_shardings, state_shardings, batch_sharding),
    out_shardings=(param_shardings, state_shardings, None),
    donate_argnums=(0, 1),
  )

  def laid_out(tree, shardings):
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree,
      shardings,
    )

  batch = jax.ShapeDtypeStruct(
    (batch_size, seq_len + 1), jnp.int32, sharding=batch_sharding
  )
  compiled = step.lower(
    laid_out(abstract, param_shardings),
    laid_out(jax.eval_shape(tx.init, abstract), state_shardings),
    batch,
  ).compile()
  need = _compiled_step_bytes(compiled)
  if need is not None:
    _refuse_if_too_large(need, mesh, batch_size, seq_len)
  loss_fn = functools.partial(model.loss, model_cfg)
  return Compiled(
    tx=tx,
    batch_sharding=batch_sharding,
    init_state=jax.jit(tx.init, out_shardings=state_shardings),
    train_step=compiled,
    eval_step=jax.jit(loss_fn, in_shardings=(param_shardings, batch_sharding)),
  )
