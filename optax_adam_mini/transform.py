"""The update math and where state lives: `scale_by_adam_mini` and `adam_mini`.

For a block :math:`b` of coordinates, gradient :math:`g`, step :math:`t`:

.. math::

  m &\\leftarrow \\beta_1 m + (1 - \\beta_1) g \\quad\\text{(per coordinate)} \\\\
  v_b &\\leftarrow \\beta_2 v_b + (1 - \\beta_2)
        \\operatorname{mean}_{i \\in b} g_i^2 \\quad\\text{(one float32 per block)} \\\\
  u_i &= \\frac{m_i / (1 - \\beta_1^t)}{\\sqrt{v_b / (1 - \\beta_2^t)
        + \\epsilon_{root}} + \\epsilon}

With every block of size one this is exactly :func:`optax.scale_by_adam`.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adam_mini import block as block_lib
from optax_adam_mini import flax_metadata, quantize
from optax_adam_mini import partition as partition_lib
from optax_adam_mini.default_partition import (
  default_weight_decay_mask,
  label_function,
)


class ScaleByAdamMiniState(NamedTuple):
  """State of :func:`scale_by_adam_mini`.

  Attributes:
    count: the step count, an int32 scalar that saturates instead of
      overflowing.
    mu: the first moment, shaped like the params, in ``mu_dtype`` (default: the
      params' dtype). Quantized (``mu_dtype=jnp.int8``, ``jnp.int4``), a leaf
      is a :class:`~optax_adam_mini.QuantizedArray` of codes and scales, or a
      float32 array for leaves kept in full precision.
    v: the second moment, one float32 scalar per block: a pytree like the params
      whose leaves have the block's ``v`` shape (kept axes at full size, reduced
      axes of size 1), or a tuple of such arrays for a fused leaf.
    blocks: every leaf's block, decided at ``init`` from the params (their
      paths, shapes and axis names). Static: part of the state's tree
      structure, with no arrays, so it costs nothing on device, is not
      checkpointed and keeps ``update`` from resolving the partition again.
    rng_key: the seed of stochastic rounding (a ``uint32`` scalar, the same
      at every step: each step's keys fold in the count); ``None`` without
      it.
  """

  count: jax.Array
  mu: optax.Updates
  v: optax.Updates
  blocks: partition_lib.BlockTable
  rng_key: jax.Array | None = None


def _check_hyperparameters(**values):
  """Rejects bad hyper-parameters at once, naming them.

  Floats are range-checked; arrays (and, where a schedule is allowed,
  callables) pass through to be used as given.
  """
  schedules = ('learning_rate', 'weight_decay')
  for name, value in values.items():
    if callable(value) and name in schedules:
      continue
    if isinstance(value, bool) or not isinstance(
      value, (numbers.Real, jax.Array, np.ndarray, np.generic)
    ):
      kind = 'a float or an optax schedule' if name in schedules else 'a float'
      raise TypeError(f'{name} must be {kind}, got {value!r}.')
    if not isinstance(value, numbers.Real):
      continue
    if name in ('b1', 'b2') and not 0.0 <= value < 1.0:
      raise ValueError(f'{name} must be in [0, 1), got {value}.')
    if name not in ('b1', 'b2') and value < 0:
      raise ValueError(f'{name} must be non-negative, got {value}.')


def scale_by_adam_mini(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  *,
  partition: partition_lib.Partition | None = None,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
  layouts: Mapping[str, Any] | None = None,
  strict: bool = False,
  block_rules: str = 'reference',
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam-mini: Adam with one second moment per block.

  .. math::

    m &\leftarrow \beta_1 m + (1 - \beta_1) g \\
    v_b &\leftarrow \beta_2 v_b + (1 - \beta_2) \operatorname{mean}_{i \in b}
          g_i^2 \\
    u_i &= \frac{m_i / (1 - \beta_1^t)}{\sqrt{v_b / (1 - \beta_2^t)
          + \epsilon_{root}} + \epsilon} \quad (i \in b)

  ``m`` has the params' shape; ``v`` holds one float32 per block, stored
  reduced (never broadcast to full size). The partition decides the blocks
  once, in ``init``, from the params' paths, shapes and axis names; the state
  keeps them (statically), so ``update`` needs no ``params`` and applies the
  same blocks whatever wrappers the updates arrive in.

  Args:
    b1: decay of the first moment.
    b2: decay of the per-block second moment.
    eps: added to the denominator outside the square root.
    eps_root: added to the bias-corrected ``v`` inside the square root.
    mu_dtype: dtype of the first moment; ``None`` keeps the params' dtype.
      ``jnp.int8`` or ``jnp.int4`` quantize it, one float32 scale per group of
      coordinates; a :class:`MomentQuantization` sets how.
    partition: a :class:`Block`, a pytree (or prefix) of blocks, or a label
      function ``params -> pytree of Block``; ``None`` uses
      :func:`default_partition` with the options below.
    num_heads: query heads, for attention leaves with flattened heads.
    num_kv_heads: key/value heads under grouped-query attention.
    head_dim: coordinates per head, where it is not ``D / num_heads``.
    value_blocks: ``'neuron'`` or ``'whole'``, for value projections.
    layouts: leaves' layouts stated by path pattern, for the default
      partition (see :func:`default_partition`).
    strict: make the default partition raise where it would warn that a leaf
      is not recognised.
    block_rules: ``'reference'`` (the reference's blocks) or ``'slim'``
      (SlimAdam's rules by layer type), for the default partition.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from optax_adam_mini import Block, scale_by_adam_mini
    >>> tx = scale_by_adam_mini(partition=Block.along(-1))
    >>> params = {'kernel': jnp.ones((3, 2))}
    >>> state = tx.init(params)
    >>> state.v['kernel'].shape  # one v per output neuron
    (1, 2)
    >>> updates, state = tx.update({'kernel': jnp.full((3, 2), 0.5)}, state)
    >>> updates['kernel'].round(3)  # m_hat / sqrt(v_hat): 0.5 / 0.5
    Array([[1., 1.],
           [1., 1.],
           [1., 1.]], dtype=float32)
  """
  _check_hyperparameters(b1=b1, b2=b2, eps=eps, eps_root=eps_root)
  label = label_function(
    partition,
    num_heads=num_heads,
    num_kv_heads=num_kv_heads,
    head_dim=head_dim,
    value_blocks=value_blocks,
    layouts=layouts,
    strict=strict,
    block_rules=block_rules,
  )
  mu_dtype, quantization = quantize.resolve_mu_dtype(mu_dtype)

  def moment_layouts(paths, plans):  # each leaf's groups, or None: float m
    return [quantize.leaf_layout(quantization, *x) for x in zip(paths, plans)]

  def init_fn(params):
    leaves, treedef = partition_lib.resolve(label, params)
    flax_metadata.register_static_state(partition_lib.BlockTable)
    blocks = partition_lib.BlockTable.of(leaves)
    leaf_layouts = moment_layouts(blocks.paths, [x.plan for x in leaves])
    mu = [
      _zeros_like_mu(x, layout, mu_dtype, quantization)
      for x, layout in zip(leaves, leaf_layouts)
    ]
    v = [_zeros_like_v(x.leaf, x.plan) for x in leaves]
    return ScaleByAdamMiniState(
      count=jnp.zeros([], jnp.int32),
      mu=flax_metadata.mu_tree(params, treedef, mu, leaf_layouts),
      v=flax_metadata.v_tree(params, treedef, v, [x.plan for x in leaves]),
      blocks=blocks,
      rng_key=quantize.init_key(quantization),
    )

  def update_fn(updates, state, params=None):
    del params
    plans, treedef = state.blocks.plans(updates)
    count_inc = optax.safe_increment(state.count)
    leaf_layouts = moment_layouts(state.blocks.paths, plans)
    mus = flax_metadata.mu_leaves(updates, treedef, leaf_layouts, state.mu)
    vs = flax_metadata.v_treedef(updates, treedef, plans).flatten_up_to(state.v)
    keys = [None] * len(plans)
    if state.rng_key is not None:
      keys = quantize.step_keys(state.rng_key, count_inc, len(plans))
    new_updates, new_mu, new_v = _update_leaves(
      treedef.flatten_up_to(updates),
      mus,
      vs,
      plans,
      count_inc,
      b1,
      b2,
      eps,
      eps_root,
      leaf_layouts,
      keys,
    )
    unflatten = functools.partial(jax.tree_util.tree_unflatten, treedef)
    return unflatten(new_updates), ScaleByAdamMiniState(
      count=count_inc,
      mu=flax_metadata.mu_tree(updates, treedef, new_mu, leaf_layouts),
      v=flax_metadata.v_tree(updates, treedef, new_v, plans),
      blocks=state.blocks,
      rng_key=state.rng_key,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _zeros_like_mu(x, layout, mu_dtype, quantization):
  """A zero ``m`` for one leaf: codes and scales, or a float array."""
  if layout is not None:
    return quantize.zeros(x.leaf, x.plan, layout)
  if quantization is not None:  # small leaves keep a float32 m
    mu_dtype = jnp.float32
  # An explicit dtype also drops weak types, which `update` would not keep.
  return jnp.zeros_like(x.leaf, dtype=mu_dtype or x.leaf.dtype)


# One jitted function for every leaf, the plan static: jax caches its trace
# per argument type (shape, dtype, weak type, sharding), plan and mesh context,
# where `jax.eval_shape` of a fresh lambda traced every leaf anew (5,000
# leaves: seconds of `init`). jax keys the cache, so no hand-made key can
# miss what the type depends on.
_block_mean_square = jax.jit(block_lib.block_mean_square, static_argnums=1)


def _zeros_like_v(leaf, plan: block_lib.Plan):
  """Zeros with the exact type (shape, dtype, sharding) `update` gives `v`."""
  if hasattr(_block_mean_square, 'trace'):
    # What `jax.eval_shape` returns, from the cached trace.
    shapes = _block_mean_square.trace(leaf, plan).out_info
  else:  # a JAX without `jit(...).trace`
    shapes = jax.eval_shape(
      lambda x: block_lib.block_mean_square(x, plan), leaf
    )
  return jax.tree.map(jnp.zeros_like, shapes)


def _update_leaves(
  grads, mus, vs, plans, count, b1, b2, eps, eps_root, layouts, keys
):
  """Every leaf's step, each on its own; returns lists (updates, mu, v).

  On a GPU each leaf costs a reduction, a small kernel for its blocks' ``v``
  (XLA fuses a consumer into a reduction only if it reads nothing else, and
  the EMA reads ``v``) and the elementwise pass. Computing all leaves' block
  arrays as one concatenated vector was measured and not adopted
  (``benchmarks/update_step_variants.py``, ``adam_mini_batched_ema``): XLA then adds a
  kernel per leaf for the slices, and the ``v`` shardings drift from those
  ``init`` gives.
  """
  updates, new_mus, new_vs = [], [], []
  for g, mu, v, plan, layout, key in zip(grads, mus, vs, plans, layouts, keys):
    update, mu, v = _update_leaf(
      g, mu, v, plan, count, b1, b2, eps, eps_root, layout, key
    )
    updates.append(update)
    new_mus.append(mu)
    new_vs.append(v)
  return updates, new_mus, new_vs


def _update_leaf(g, mu, v, plan, count, b1, b2, eps, eps_root, layout, key):
  """One leaf's step; returns (update, mu, v).

  A quantized ``m`` is decoded, updated and encoded again in one pass; its
  new group maxima come from the reduction that gives the block means.
  """
  if layout is None:
    mu_new = optax.tree.update_moment(g, mu, b1, 1)
    mean_sq = block_lib.block_mean_square(g, plan)
  else:
    mu_new = optax.tree.update_moment(g, quantize.decode(mu, layout), b1, 1)
    mean_sq, maxima = quantize.group_stats(g, mu_new, plan, layout)
  v_new = jax.tree.map(
    lambda mean_sq, v: (1 - b2) * mean_sq + b2 * v, mean_sq, v
  )
  mu_hat = optax.tree.bias_correction(mu_new, b1, count)
  v_hat = optax.tree.bias_correction(v_new, b2, count)
  denominator = jax.tree.map(lambda v: jnp.sqrt(v + eps_root) + eps, v_hat)
  update = block_lib.divide_by_blocks(mu_hat, denominator, plan)
  if layout is None:
    return update.astype(g.dtype), mu_new.astype(mu.dtype), v_new
  mu_new = quantize.encode(mu_new, maxima, layout, key)
  return update.astype(g.dtype), mu_new, v_new


def adam_mini(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  weight_decay: optax.ScalarOrSchedule = 1e-4,
  mask: Any = None,
  *,
  partition: partition_lib.Partition | None = None,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
  layouts: Mapping[str, Any] | None = None,
  strict: bool = False,
  block_rules: str = 'reference',
  weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam-mini: AdamW with one second moment per Hessian block.

  Zhang et al. (2024) observe that a transformer's Hessian is near
  block-diagonal and that one learning rate per block serves as well as Adam's
  one per coordinate. Adam-mini keeps Adam's first moment ``m`` per parameter
  and stores one ``v`` per block, the EMA of the block's mean squared gradient:
  about half of AdamW's optimizer memory, with AdamW's hyper-parameters.

  .. math::

    \theta \leftarrow \theta - \eta_t \left(
      \frac{m_i / (1 - \beta_1^t)}{\sqrt{v_b / (1 - \beta_2^t)} + \epsilon}
      + \lambda \theta \right)

  Built as ``optax.chain(scale_by_adam_mini(...), add_decayed_weights(...),
  scale_by_learning_rate(...))``, like :func:`optax.adamw`, whose positional
  arguments it shares.

  Args:
    learning_rate: a float or an optax schedule.
    b1: decay of the first moment.
    b2: decay of the per-block second moment.
    eps: added to the denominator outside the square root.
    eps_root: added to the bias-corrected ``v`` inside the square root.
    mu_dtype: dtype of the first moment (``jnp.bfloat16`` halves it again;
      ``jnp.int8`` stores about one byte per parameter, ``jnp.int4`` half a
      byte: see :class:`MomentQuantization`).
    weight_decay: decoupled weight decay :math:`\lambda` (a float or schedule).
    mask: which leaves decay: a pytree or callable as in
      :func:`optax.adamw`; ``None`` decays every leaf except norm scales and
      biases (:func:`default_weight_decay_mask`).
    partition: a :class:`Block`, a pytree (or prefix) of blocks, or a label
      function; ``None`` uses :func:`default_partition`.
    num_heads: query heads, for attention leaves with flattened heads.
    num_kv_heads: key/value heads under grouped-query attention.
    head_dim: coordinates per head, where it is not ``D / num_heads``.
    value_blocks: ``'neuron'`` (default) or ``'whole'`` (one ``v`` per value
      leaf, the reference's advice for runs under about 10k steps).
    layouts: leaves' layouts stated by path pattern (see
      :func:`default_partition`), e.g. ``{'q_einsum/w': 'query: heads in
      head_dim'}``.
    strict: raise where the default partition would warn that a leaf of a
      transformer is not recognised.
    block_rules: ``'reference'`` (default: the reference implementation's
      blocks) or ``'slim'``: SlimAdam's rules by layer type (one ``v`` per
      output neuron for queries and keys, per input neuron for values,
      attention outputs and MLPs, plain Adam for norm scales; see
      :func:`default_partition`).
    weight_decay_mask: deprecated name of ``mask``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_adam_mini import adam_mini
    >>> params = {'embed': {'embedding': jnp.ones((10, 4))},
    ...           'mlp': {'kernel': jnp.ones((4, 4)), 'bias': jnp.zeros(4)}}
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), adam_mini(1e-3))
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)

  References:
    Zhang et al., `Adam-mini: Use Fewer Learning Rates To Gain More
    <https://arxiv.org/abs/2406.16793>`_, 2024.

  .. seealso:: :func:`optax.adamw`, :func:`default_partition`.
  """
  _check_hyperparameters(learning_rate=learning_rate, weight_decay=weight_decay)
  if weight_decay_mask is not None:
    if mask is not None:
      raise ValueError('Pass mask= only (weight_decay_mask is its old name).')
    warnings.warn(
      'adam_mini(weight_decay_mask=...) is deprecated: pass mask=, as to '
      'optax.adamw.',
      DeprecationWarning,
      stacklevel=2,
    )
    mask = weight_decay_mask
  if mask is None:
    mask = default_weight_decay_mask
  return optax.chain(
    scale_by_adam_mini(
      b1=b1,
      b2=b2,
      eps=eps,
      eps_root=eps_root,
      mu_dtype=mu_dtype,
      partition=partition,
      num_heads=num_heads,
      num_kv_heads=num_kv_heads,
      head_dim=head_dim,
      value_blocks=value_blocks,
      layouts=layouts,
      strict=strict,
      block_rules=block_rules,
    ),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )
