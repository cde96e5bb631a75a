"""A quantized first moment: integer codes with one scale per group.

With ``mu_dtype=jnp.int8`` (or ``jnp.int4``) Adam-mini stores ``m`` as one
code per coordinate and one float32 scale per *group*: ``group_size``
consecutive coordinates along one axis of the leaf (the group axis). A group's
scale is its largest ``|m|``; a code stands for a fraction of it:

.. math::

  m_i \\approx s_k\\, q(c_i), \\qquad s_k = \\max_{j \\in k} |m_j|,
  \\qquad q(c) \\in [-1, 1]

Two maps ``q`` (codes) are provided:

* ``'linear'``: ``q(c) = c / L`` with ``L = 2**(bits - 1) - 1`` (127 or 7);
  the error is at most ``s_k / (2 L)`` for every coordinate of the group.
* ``'dynamic'``: a sign and a magnitude on a decade grid (dynamic tree
  quantization, as in bitsandbytes' 8-bit optimizers): with ``M = bits - 1``
  magnitude bits, decade ``e`` (``0 <= e < M``) holds ``2**(M - 1 - e)``
  evenly spaced magnitudes in ``(10**-(e + 1), 10**-e]`` (the lowest decade
  starts at 0), so small values of a group keep several significant digits.

Each step the moment is decoded, updated in float32, its new group maxima are
taken (in the same pass as the block means of ``g**2`` where the group axis is
one the block averages over), and it is encoded again: to the nearest code, or
by stochastic rounding (the default), whose noise is a hash of each
coordinate's index, the step and a seed kept in the state. Rounded to nearest,
``m`` sticks: a step's change ``(1 - b1) (g - m)`` under half a level is lost
at every step (measured: 1.4-1.8% higher loss; BENCHMARKS.md, section 5).

Which axis holds the groups, and their size, is decided from the leaf's shape
and block at trace time (:func:`leaf_layout`): leaves with fewer than
``min_size`` coordinates, and leaves with no axis that takes a group of at
least ``group_size / 8``, keep a float32 ``m``. Groups never cross the boundary
of a shard: under a mesh whose shards would cut a group, :func:`encode` raises.
4-bit codes are packed two per byte (``uint8``): XLA stores ``int4`` arrays
one element per byte on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_adam_mini import block as block_lib
from optax_adam_mini.default_partition import Role, classify

__all__ = ['MomentQuantization', 'QuantizedArray']

CODES = ('linear', 'dynamic')
STOCHASTIC_ROUNDING = ('none', 'embeddings', 'all')
_EMBEDDING_ROLES = (Role.EMBEDDING, Role.OUTPUT)


# Per width: the default (code, stochastic rounding); see MomentQuantization.
_DEFAULTS = {8: ('linear', 'all'), 4: ('linear', 'all')}


@dataclasses.dataclass(frozen=True)
class MomentQuantization:
  """How ``m`` is quantized; pass it as ``mu_dtype``.

  ``mu_dtype=jnp.int8`` means ``MomentQuantization(bits=8)`` and
  ``jnp.int4`` means ``MomentQuantization(bits=4)``, with the defaults below.

  The defaults are the measured best of each width (BENCHMARKS.md, section
  5: a 9.4M-parameter Llama, 0.2x Chinchilla, final validation loss over
  float32 ``m``'s of the same seed): linear codes with stochastic rounding
  on every leaf. Rounded to nearest, both 8-bit codes and 4-bit dynamic
  ones lost 1.4-1.8%, 4-bit linear ones 13% (a change of ``m`` smaller than
  half a level is rounded away at every step, so ``m`` sticks). With
  stochastic rounding, on the means of two training seeds 8 bits gave
  1.009x (ten runs) and 4 bits 1.013x (five), where one run spreads by
  about 1.8%: within noise of float32 ``m``, and not resolved to the 0.5%
  that separates parity from a small loss. Linear codes are the faster to
  decode and encode (section 5's update step: 42.4 against 51.8 ms on
  Llama-2-7B, rounded to nearest).

  Attributes:
    bits: 8 (``int8`` codes) or 4 (two codes per ``uint8``).
    code: ``'dynamic'`` or ``'linear'`` (see the module docstring). ``None``:
      ``'linear'``.
    group_size: the coordinates that share one float32 scale, at most; a leaf
      whose axes it does not divide gets the largest group that does (see
      :func:`leaf_layout`). ``None``: 256 for 8 bits, 128 for 4 bits.
    min_size: leaves with fewer coordinates keep a float32 ``m`` (norm scales,
      biases: a negligible share of the state).
    stochastic_rounding: ``'none'``, ``'embeddings'`` (embedding and output
      leaves, as the role of :func:`~optax_adam_mini.classify` says) or
      ``'all'``: round each code up or down at random, with the probability
      that keeps it unbiased. The seed lives in the state. ``None``:
      ``'all'``.
    seed: the seed of that noise.

  >>> import jax.numpy as jnp
  >>> from optax_adam_mini import MomentQuantization, adam_mini
  >>> tx = adam_mini(1e-3, mu_dtype=MomentQuantization(bits=8, group_size=128))
  """

  bits: int = 8
  code: str | None = None
  group_size: int | None = None
  min_size: int = 4096
  stochastic_rounding: str | None = None
  seed: int = 0

  def __post_init__(self):
    if self.bits not in (4, 8):
      raise ValueError(
        f'MomentQuantization: bits must be 4 or 8, got {self.bits}.'
      )
    # The measured defaults of each width, fixed here so that two equal
    # settings compare (and hash) equal however they were written.
    if self.code is None:
      object.__setattr__(self, 'code', _DEFAULTS[self.bits][0])
    if self.stochastic_rounding is None:
      object.__setattr__(self, 'stochastic_rounding', _DEFAULTS[self.bits][1])
    if self.code not in CODES:
      raise ValueError(
        f'MomentQuantization: code must be one of {CODES}, got {self.code!r}.'
      )
    if self.group_size is not None and (
      not isinstance(self.group_size, int) or self.group_size < 1
    ):
      raise ValueError(
        'MomentQuantization: group_size must be a positive int or None, got '
        f'{self.group_size!r}.'
      )
    if self.bits == 4 and self.group_size is not None and self.group_size < 2:
      raise ValueError('MomentQuantization: 4-bit codes need groups of 2+.')
    if self.stochastic_rounding not in STOCHASTIC_ROUNDING:
      raise ValueError(
        'MomentQuantization: stochastic_rounding must be one of '
        f'{STOCHASTIC_ROUNDING}, got {self.stochastic_rounding!r}.'
      )

  @property
  def target_group_size(self) -> int:
    if self.group_size is not None:
      return self.group_size
    return 256 if self.bits == 8 else 128

  @property
  def uses_key(self) -> bool:
    return self.stochastic_rounding != 'none'


class QuantizedArray(NamedTuple):
  """One leaf's quantized ``m``: plain arrays, so the state stays a pytree.

  Attributes:
    codes: ``int8``, shaped like the param; for 4 bits ``uint8`` with two
      codes per byte, the group axis halved.
    scales: ``float32``, the param's shape with the group axis divided by the
      group size: each group's largest ``|m|``.
  """

  codes: jax.Array
  scales: jax.Array


class GroupLayout(NamedTuple):
  """Where one leaf's groups lie and how they are coded (static).

  ``axis`` is the group axis and ``group_size`` the coordinates per group
  along it; ``within_blocks`` says that every group lies inside one block of
  ``v`` (the block averages over ``axis``), so one reduction gives both the
  block sums of ``g**2`` and the group maxima. ``path`` names the leaf in
  errors.
  """

  path: str
  shape: tuple[int, ...]
  axis: int
  group_size: int
  bits: int
  code: str
  stochastic: bool
  within_blocks: bool

  @property
  def scales_shape(self) -> tuple[int, ...]:
    shape = list(self.shape)
    shape[self.axis] //= self.group_size
    return tuple(shape)

  @property
  def codes_shape(self) -> tuple[int, ...]:
    shape = list(self.shape)
    if self.bits == 4:
      shape[self.axis] //= 2
    return tuple(shape)


def resolve_mu_dtype(mu_dtype) -> tuple[Any, MomentQuantization | None]:
  """``(float mu_dtype or None, quantization or None)`` from ``mu_dtype``.

  Raises:
    TypeError: if ``mu_dtype`` is not a dtype, a `MomentQuantization` or
      ``None``.
    ValueError: for a dtype that is neither floating nor ``int8``/``int4``.
  """
  if mu_dtype is None:
    return None, None
  if isinstance(mu_dtype, MomentQuantization):
    return None, mu_dtype
  try:
    dtype = jnp.dtype(mu_dtype)
  except TypeError:
    raise TypeError(
      'mu_dtype must be a dtype, a MomentQuantization or None, got '
      f'{mu_dtype!r}.'
    ) from None
  if dtype == jnp.int8:
    return None, MomentQuantization(bits=8)
  if dtype == jnp.int4:
    return None, MomentQuantization(bits=4)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      f'mu_dtype={dtype} is not supported: the first moment is stored in a '
      'floating dtype (float32, bfloat16, ...), or quantized with '
      'jnp.int8, jnp.int4 or a MomentQuantization; a plain cast to another '
      'integer dtype would silently lose the momentum.'
    )
  return dtype, None


# Odd constants that spread small integers over 32 bits: 2**32 over the
# golden ratio, and MurmurHash3's second finalizer multiplier.
_GOLDEN = np.uint32(0x9E3779B9)
_SECOND = np.uint32(0x85EBCA6B)


def init_key(quantization: MomentQuantization | None):
  """The stochastic-rounding seed for the state (a ``uint32`` scalar; see
  :func:`step_keys`), or None."""
  if quantization is None or not quantization.uses_key:
    return None
  return jnp.asarray(quantization.seed, jnp.uint32)


def step_keys(seed, count, leaves: int) -> list[jax.Array]:
  """The noise's key of each leaf at step ``count``: two ``uint32`` words, a
  hash of the seed, the step and the leaf's index.

  The state's seed never changes, and a scalar has one sharding (a mesh
  can write a vector's replication two ways, which would change the state's
  type after ``update``); the step count makes each step's noise new, and a
  resumed run, whose state holds the same count, draws the same noise as the
  uninterrupted one. The words are a few integer operations on scalars,
  which XLA folds into each leaf's encoding; ``jax.random.fold_in``
  (threefry) took a GPU several small kernels per leaf and step.
  """
  mixed = _lowbias32(jnp.asarray(seed, jnp.uint32) + _GOLDEN)
  step = _lowbias32(mixed ^ jnp.asarray(count).astype(jnp.uint32))
  keys = []
  for i in range(leaves):
    first = _lowbias32(step + np.uint32(int(_GOLDEN) * (i + 1) % 2**32))
    keys.append(jnp.stack([first, _lowbias32(first ^ _SECOND)]))
  return keys


# Layout ---------------------------------------------------------------------


def leaf_layout(
  quantization: MomentQuantization | None, path: str, plan: block_lib.Plan
) -> GroupLayout | None:
  """Where ``m``'s groups lie for a leaf; ``None`` keeps a float32 ``m``.

  The group axis is an axis the leaf's block averages over in full (any axis
  for elementwise blocks), so that a group shares one ``v``. Along it the
  group size divides the axis, is at most the target size and, if it can
  be, at least half of it; among those sizes, the one whose number of groups
  the most shards divide (powers of two, up to 16), then the longest: an
  axis of 11008 with target 256 gets groups of 172 (64 per row) rather than
  256 (43 per row, which no even number of shards divides). The longest group
  over the axes wins; ties go to the last axis.

  >>> from optax_adam_mini import Block, MomentQuantization
  >>> q = MomentQuantization(bits=8)
  >>> plan = block_lib.bind(Block.along(-1), (11008, 4096))  # v per column
  >>> layout = leaf_layout(q, 'mlp/down_proj/kernel', plan)
  >>> layout.axis, layout.group_size
  (0, 172)
  """
  if quantization is None:
    return None
  shape = tuple(plan.shape)
  if math.prod(shape) < quantization.min_size or not shape:
    return None
  target = quantization.target_group_size
  axes = _averaged_axes(plan)
  within_blocks = axes is not None
  if axes is None:
    axes = tuple(range(len(shape)))
  best = None
  for axis in axes:
    size = _group_size(shape[axis], target, even=quantization.bits == 4)
    if size and (best is None or size >= best[1]):
      best = (axis, size)
  if best is None:
    return None
  stochastic = quantization.stochastic_rounding == 'all' or (
    quantization.stochastic_rounding == 'embeddings'
    and classify(path.split('/')) in _EMBEDDING_ROLES
  )
  return GroupLayout(
    path,
    shape,
    best[0],
    best[1],
    quantization.bits,
    quantization.code,
    stochastic,
    within_blocks,
  )


def _averaged_axes(plan: block_lib.Plan) -> tuple[int, ...] | None:
  """Leaf axes every block averages over in full; ``None``: no averaging."""
  if isinstance(plan, block_lib.ConcatPlan):
    per_part = [_averaged_axes(p) for p in plan.plans]
    if all(axes is None for axes in per_part):
      return None
    every = set(range(len(plan.shape))) - {plan.axis}
    for axes in per_part:
      if axes is not None:
        every &= set(axes)
    return tuple(sorted(every))
  if not plan.reduce_axes:
    return None
  split = plan.head_axis
  axes = []
  for view_axis in plan.reduce_axes:
    if split is None or view_axis < split:
      axes.append(view_axis)
    elif view_axis > split + 1:
      axes.append(view_axis - 1)
    # split + 1 is the head's own coordinates: averaged only within heads.
  return tuple(axes)


def _group_size(size: int, target: int, even: bool) -> int:
  """The group size along an axis of ``size`` (0: no group fits).

  A divisor of ``size`` of at most ``target``: from those of at least half of
  it if any (else of at least an eighth), the one that leaves a number of
  groups divisible by the largest power of two (so that that many shards of
  the axis hold whole groups), up to 16 and up to ``size / target``, then the
  largest.
  """
  most = min(16, 1 << max(0, (size // target).bit_length() - 1))

  def shards(group: int) -> int:
    count = size // group
    return min(most, count & -count)

  for smallest in (-(-target // 2), max(1, target // 8)):
    groups = [
      group
      for group in range(min(size, target), smallest - 1, -1)
      if size % group == 0 and not (even and group % 2)
    ]
    if groups:
      return max(groups, key=lambda group: (shards(group), group))
  return 0


# Codes ----------------------------------------------------------------------


def _levels(bits: int) -> int:
  return 2 ** (bits - 1) - 1


def _decades(bits: int):
  """Per decade: (lowest value, step, levels), top decade first."""
  magnitude_bits = bits - 1
  out = []
  for e in range(magnitude_bits):
    top = 10.0**-e
    low = 10.0 ** -(e + 1) if e < magnitude_bits - 1 else 0.0
    levels = 2 ** (magnitude_bits - 1 - e)
    out.append((np.float32(low), np.float32((top - low) / levels), levels))
  return out


def dynamic_magnitudes(bits: int) -> np.ndarray:
  """The dynamic code's magnitudes by index (0 first), as float32.

  >>> dynamic_magnitudes(4)
  array([0.   , 0.01 , 0.055, 0.1  , 0.325, 0.55 , 0.775, 1.   ], dtype=float32)
  """
  values = [np.float32(0.0)]
  for low, step, levels in reversed(_decades(bits)):
    values.extend(low + np.float32(j) * step for j in range(1, levels + 1))
  return np.asarray(values, np.float32)


def _encode_linear(u, bits, noise):
  x = u * _levels(bits)
  c = jnp.round(x) if noise is None else jnp.floor(x + noise)
  return jnp.clip(c, -_levels(bits), _levels(bits)).astype(jnp.int32)


def _decode_linear(c, bits):
  return c.astype(jnp.float32) * (1.0 / _levels(bits))


def _encode_dynamic(u, bits, noise):
  """Sign times the index of the magnitude (nearest or stochastic)."""
  magnitude = jnp.abs(u)
  decades = _decades(bits)
  # Multiplying by each decade's 1 / step (a constant) rather than dividing
  # by its step: a float32 division is a sequence of instructions on a GPU.
  low = jnp.full_like(magnitude, decades[0][0])
  per_step = jnp.full_like(magnitude, 1 / decades[0][1])
  levels = jnp.full(magnitude.shape, decades[0][2], jnp.int32)
  for low_e, step_e, levels_e in decades[1:]:
    inside = magnitude <= low  # at or below this decade's top
    low = jnp.where(inside, low_e, low)
    per_step = jnp.where(inside, np.float32(1 / step_e), per_step)
    levels = jnp.where(inside, levels_e, levels)
  r = (magnitude - low) * per_step
  j = jnp.round(r) if noise is None else jnp.floor(r + noise)
  j = jnp.clip(j.astype(jnp.int32), 0, levels)
  # Decade e's magnitudes are indices levels .. 2 * levels - 1; j = 0 is the
  # top of the decade below (index levels - 1), or 0 at the bottom.
  index = levels - 1 + j
  return jnp.where(u < 0, -index, index)


def _decode_dynamic(c, bits):
  """The magnitude of each index, computed (not looked up: stays fused)."""
  index = jnp.abs(c.astype(jnp.int32))
  decades = _decades(bits)
  low, step, levels = decades[-1]
  low = jnp.full(index.shape, low)
  step = jnp.full(index.shape, step)
  levels = jnp.full(index.shape, levels, jnp.int32)
  for low_e, step_e, levels_e in reversed(decades[:-1]):
    inside = index >= levels_e  # in this decade or above
    low = jnp.where(inside, low_e, low)
    step = jnp.where(inside, step_e, step)
    levels = jnp.where(inside, levels_e, levels)
  magnitude = low + (index - levels + 1).astype(jnp.float32) * step
  return jnp.where(c < 0, -magnitude, magnitude)


def _encoder(code: str):
  """The encoding of ``code`` (looked up when traced: benchmarks swap it)."""
  return _encode_dynamic if code == 'dynamic' else _encode_linear


def _decoder(code: str):
  return _decode_dynamic if code == 'dynamic' else _decode_linear


# Groups ---------------------------------------------------------------------


def _shards_along(x, axis: int) -> int:
  """How many shards split ``axis`` of ``x`` in its type (1 in Auto mode)."""
  typeof = getattr(jax, 'typeof', None)
  sharding = getattr(typeof(x) if typeof else None, 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is None or len(spec) <= axis or spec[axis] is None:
    return 1
  names = spec[axis] if isinstance(spec[axis], tuple) else (spec[axis],)
  return math.prod(sharding.mesh.shape[name] for name in names)


def check_shards(x, layout: GroupLayout) -> None:
  """Raises if the shards of ``x`` along the group axis would cut a group."""
  shards = _shards_along(x, layout.axis)
  groups = layout.shape[layout.axis] // layout.group_size
  if groups % shards:
    size = layout.shape[layout.axis]
    raise ValueError(
      f'Quantized m of {layout.path} (shape {layout.shape}): groups of '
      f'{layout.group_size} along axis {layout.axis} would cross the '
      f'boundaries of its {shards} shards ({size // shards} coordinates '
      f'each). Use a MomentQuantization(group_size=...) whose groups divide '
      f'{size // shards}, or shard another axis.'
    )


def _group_view(x, layout: GroupLayout):
  """``x`` with the group axis split into ``(groups, group_size)``."""
  a, size = layout.axis, layout.group_size
  shape = x.shape[:a] + (x.shape[a] // size, size) + x.shape[a + 1 :]
  return x.reshape(shape)


def _merge_view(x, layout: GroupLayout):
  a = layout.axis
  return x.reshape(x.shape[:a] + (-1,) + x.shape[a + 2 :])


def group_stats(g, m, plan: block_lib.Plan, layout: GroupLayout):
  """``(block means of g**2 shaped like v, group maxima of |m|)``.

  Where the groups lie inside the blocks, one reduction over each group gives
  both its sum of ``g**2`` and its largest ``|m|``; the block means then sum
  the (``group_size`` times smaller) group sums. Elsewhere (elementwise
  blocks) ``v`` needs no reduction and the maxima are their own.
  """
  check_shards(g, layout)
  a = layout.axis + 1
  m_view = jnp.abs(_group_view(m, layout))
  if not layout.within_blocks:
    return block_lib.block_mean_square(g, plan), jnp.max(m_view, axis=a)
  g2_view = jnp.square(_group_view(g.astype(jnp.float32), layout))
  sums, maxima = jax.lax.reduce(
    (g2_view, m_view),
    (np.float32(0), np.float32(0)),
    lambda x, y: (x[0] + y[0], jnp.maximum(x[1], y[1])),
    (a,),
  )
  # block_mean_square averages squares: the roots of the group sums give
  # back those sums (to one rounding), over group_size times fewer terms.
  group_plan = _plan_for_shape(plan, sums.shape)
  mean_of_sums = block_lib.block_mean_square(jnp.sqrt(sums), group_plan)
  mean_sq = jax.tree.map(lambda x: x / layout.group_size, mean_of_sums)
  return mean_sq, maxima


def _plan_for_shape(plan: block_lib.Plan, shape) -> block_lib.Plan:
  """``plan`` for a leaf whose averaged axes have other sizes."""
  shape = tuple(shape)
  if isinstance(plan, block_lib.ConcatPlan):
    parts = []
    for part in plan.plans:
      part_shape = list(shape)
      part_shape[plan.axis] = part.shape[plan.axis]
      parts.append(_plan_for_shape(part, part_shape))
    return plan._replace(shape=shape, plans=tuple(parts))
  view = list(shape)
  if plan.head_axis is not None:
    h = plan.head_axis
    view = view[:h] + list(plan.view_shape[h : h + 2]) + view[h + 1 :]
  return plan._replace(shape=shape, view_shape=tuple(view))


def encode(m, maxima, layout: GroupLayout, key=None) -> QuantizedArray:
  """Quantizes float32 ``m`` given its group maxima (see `group_stats`)."""
  check_shards(m, layout)
  view = _group_view(m, layout)
  u = view * jnp.expand_dims(_reciprocal_scales(maxima), layout.axis + 1)
  noise = None
  if layout.stochastic:
    noise = _uniform(key, view)
  codes = _encoder(layout.code)(u, layout.bits, noise)
  if layout.bits == 4:
    return QuantizedArray(_pack(codes, layout), maxima)
  return QuantizedArray(_merge_view(codes.astype(jnp.int8), layout), maxima)


def _reciprocal_scales(maxima):
  """``1 / maxima``, 0 for all-zero groups: one division per group, so that
  each coordinate is multiplied (a division per coordinate costs a GPU
  several instructions)."""
  return jnp.where(maxima > 0, 1 / jnp.where(maxima > 0, maxima, 1), 0)


def decode(q: QuantizedArray, layout: GroupLayout):
  """``m`` in float32 from its codes and scales."""
  if layout.bits == 4:
    codes = _group_view(_unpack(q.codes, layout), layout)
  else:
    codes = _group_view(q.codes, layout)
  values = _decoder(layout.code)(codes, layout.bits)
  return _merge_view(
    values * jnp.expand_dims(q.scales, layout.axis + 1), layout
  )


def _quantize_like(x, plan: block_lib.Plan, layout: GroupLayout):
  """``x`` encoded as `update` encodes ``m`` (traced only, for its type)."""
  m = x.astype(jnp.float32)
  _, maxima = group_stats(m, m, plan, layout)
  key = jnp.zeros((2,), jnp.uint32) if layout.stochastic else None
  return encode(m, maxima, layout, key)


# Plan and layout static: jax caches the trace per argument type, plan, layout
# and mesh context, so a second `init` of the same params (or a leaf like one
# before it) traces nothing; `jax.eval_shape` of a closure traced every time.
_quantize_like_jit = jax.jit(_quantize_like, static_argnums=(1, 2))


def zeros(leaf, plan: block_lib.Plan, layout: GroupLayout) -> QuantizedArray:
  """A zero ``m`` with the exact type (shape, dtype, sharding) of `update`'s."""
  if hasattr(_quantize_like_jit, 'trace'):
    # What `jax.eval_shape` returns, from the cached trace.
    shapes = _quantize_like_jit.trace(leaf, plan, layout).out_info
  else:  # a JAX without `jit(...).trace`
    shapes = jax.eval_shape(lambda x: _quantize_like(x, plan, layout), leaf)
  return jax.tree.map(jnp.zeros_like, shapes)


def _uniform(key, like):
  """Uniform floats in [0, 1), laid out like ``like``: a hash of each
  coordinate's index and this step's key.

  Rounding stays unbiased as long as each coordinate's noise is uniform and
  independent of its value; it needs no stream of independent draws. So the
  noise is a counter-based hash (Wellons' ``lowbias32`` finalizer, applied
  twice, to the index mixed with the key's two words): a dozen integer
  operations per coordinate inside the encoding's fusion, where
  ``jax.random.bits`` is materialized, 4 bytes per coordinate
  (``test_compiled_update_keeps_no_float32_copy_of_m`` bounds the step's
  temporaries at about one byte per parameter, rounding included). The
  index is the coordinate's position in the whole array, so under a mesh
  every shard draws the noise of its own coordinates: the same as on one
  device. (In a leaf of more than 2**32 coordinates the index wraps, and
  coordinates 2**32 apart share their noise; each is still unbiased.)
  """
  sharding = None
  typeof = getattr(jax, 'typeof', None)
  aval_sharding = getattr(typeof(like) if typeof else None, 'sharding', None)
  mesh = getattr(aval_sharding, 'mesh', None)
  if jax.sharding.AxisType.Explicit in tuple(getattr(mesh, 'axis_types', ())):
    sharding = aval_sharding
  # The index is a sum of one ``iota * stride`` term per axis, which XLA
  # computes as small vectors. Leaves with groups of equal shapes would share
  # those vectors, and through that shared operand XLA's sibling fusion merges
  # their update loops into one slower kernel (Llama-2-7B stacked, one H200:
  # the int8 step took 1.077x bf16 m's time so, 1.037x without). Each term
  # therefore adds this leaf's key word, taken off the sum again: the same
  # index mod 2**32, from vectors no other leaf has.
  words = jnp.asarray(key, jnp.uint32)
  index = jnp.zeros((), jnp.uint32)
  stride = 1
  for axis in reversed(range(like.ndim)):
    iota = jax.lax.broadcasted_iota(
      jnp.uint32, like.shape, axis, out_sharding=sharding
    )
    index = index + (iota * np.uint32(stride % 2**32) + words[0])
    stride *= like.shape[axis]
  index = index - words[0] * np.uint32(like.ndim)
  return _uniform_of_index(index, key)


def _uniform_of_index(index, key):
  """`_uniform`'s floats from each coordinate's ``uint32`` index."""
  words = jnp.asarray(key, jnp.uint32)  # from step_keys
  bits = _lowbias32(_lowbias32(index ^ words[0]) + words[1])
  return (bits >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def _lowbias32(x):
  """A 32-bit integer hash with good avalanche (C. Wellons, 2018)."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _pack(codes, layout: GroupLayout):
  """Two signed 4-bit codes per byte, neighbours along the group axis."""
  a = layout.axis
  merged = _merge_view(codes, layout)
  pairs = merged.reshape(
    merged.shape[:a] + (merged.shape[a] // 2, 2) + merged.shape[a + 1 :]
  )
  nibbles = (pairs & 15).astype(jnp.uint8)
  low = jax.lax.index_in_dim(nibbles, 0, a + 1, keepdims=False)
  high = jax.lax.index_in_dim(nibbles, 1, a + 1, keepdims=False)
  return low | (high << 4)


def _unpack(packed, layout: GroupLayout):
  """The int32 codes from `_pack`'s bytes, shaped like the param."""
  a = layout.axis
  signed = jax.lax.bitcast_convert_type(packed, jnp.int8).astype(jnp.int32)
  # Each nibble to the top of an int32, then back down with its sign: low
  # nibbles first, high second (a broadcast, not a stack: it stays fused).
  shape = [1] * (packed.ndim + 1)
  shape[a + 1] = 2
  shifts = np.array([28, 24], np.int32).reshape(shape)
  pairs = jnp.right_shift(
    jnp.left_shift(jnp.expand_dims(signed, a + 1), shifts), 28
  )
  return pairs.reshape(layout.shape)
