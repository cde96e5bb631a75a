"""What a block is: the rule that groups one leaf's coordinates under one `v`.

A :class:`Block` says which coordinates of a parameter leaf share one
second-moment scalar. It is pure shape logic: binding a block to a leaf's shape
(:func:`bind`) gives a :class:`LeafPlan`, and the plan's two functions are all
the update math needs:

* :func:`block_mean_square` reduces a gradient to its per-block mean of
  squares, shaped like the stored ``v`` (kept axes keep their size, reduced
  axes have size 1, so ``v`` broadcasts against the leaf with no gather);
* :func:`divide_by_blocks` divides a full-size array by a ``v``-shaped
  denominator.

Every decision is made from static shapes at trace time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Block:
  """The rule for one leaf: which coordinates share one second moment `v`.

  A block rule keeps some axes and averages over the others: the leaf gets one
  ``v`` per index combination of its kept axes. Optionally one axis is first
  split into heads of ``head_dim`` coordinates (a reshaped head-slice), and the
  head index is kept. A leaf that fuses several projections (GPT-2's
  ``c_attn``) is cut into consecutive parts along one axis, each with its own
  rule.

  Build rules with the constructors, not the fields:

  >>> from optax_adam_mini import Block
  >>> Block.elementwise()     # plain Adam: one v per coordinate
  Block.elementwise()
  >>> Block.whole()           # one v for the whole leaf (norm scales)
  Block.whole()
  >>> Block.along(-1)         # one v per output neuron of a (in, out) kernel
  Block.along(-1)
  >>> Block.heads(-1, 64)     # one v per head of 64 columns of (D, H*64)
  Block.heads(-1, 64)
  >>> Block.along(0, -1)      # per layer and output neuron of a stacked kernel
  Block.along(0, -1)

  Attributes:
    kept_axes: axes whose indices each get their own ``v``; ``None`` keeps every
      axis (elementwise). With ``head_axis`` these are the leaf's axes besides
      the split one.
    head_axis: the axis split into ``(axis_size // head_dim, head_dim)``; the
      head index is kept, the ``head_dim`` coordinates are averaged.
    head_dim: the number of coordinates per head along ``head_axis``.
    concat_axis: the axis along which ``parts`` lie, for fused leaves.
    parts: ``(size, Block)`` pairs that cut the leaf along ``concat_axis``.
  """

  kept_axes: tuple[int, ...] | None = None
  head_axis: int | None = None
  head_dim: int | None = None
  concat_axis: int | None = None
  parts: tuple[tuple[int, Block], ...] = ()

  @classmethod
  def elementwise(cls) -> Block:
    """One ``v`` per coordinate: exactly Adam for this leaf."""
    return cls(kept_axes=None)

  @classmethod
  def whole(cls) -> Block:
    """One ``v`` for the whole leaf."""
    return cls(kept_axes=())

  @classmethod
  def along(cls, *axes: int) -> Block:
    """One ``v`` per index along ``axes`` (averaged over all other axes)."""
    return cls(kept_axes=_as_axes(axes, 'Block.along'))

  @classmethod
  def heads(
    cls, axis: int, head_dim: int, *, along: Sequence[int] = ()
  ) -> Block:
    """One ``v`` per head: ``axis`` is split into heads of ``head_dim``.

    Args:
      axis: the axis holding ``num_heads * head_dim`` coordinates.
      head_dim: coordinates per head along ``axis``.
      along: further axes of the leaf to keep, e.g. a stacked layer axis.
    """
    if not isinstance(axis, int) or isinstance(axis, bool):
      raise TypeError(f'Block.heads: axis must be an int, got {axis!r}.')
    if not isinstance(head_dim, int) or isinstance(head_dim, bool):
      raise TypeError(
        f'Block.heads: head_dim must be an int, got {head_dim!r}.'
      )
    if head_dim <= 0:
      raise ValueError(
        f'Block.heads: head_dim must be positive, got {head_dim}.'
      )
    return cls(
      kept_axes=_as_axes(along, 'Block.heads'),
      head_axis=axis,
      head_dim=head_dim,
    )

  @classmethod
  def concat(cls, axis: int, parts: Sequence[tuple[int, Block]]) -> Block:
    """A fused leaf cut into consecutive parts along ``axis``.

    Args:
      axis: the axis along which the parts lie.
      parts: ``(size, rule)`` pairs in order; the sizes must add up to the
        leaf's size along ``axis``. Each rule sees its part as a leaf of the
        same rank.
    """
    if not isinstance(axis, int) or isinstance(axis, bool):
      raise TypeError(f'Block.concat: axis must be an int, got {axis!r}.')
    checked = []
    for part in parts:
      if (
        not isinstance(part, tuple)
        or len(part) != 2
        or not isinstance(part[0], int)
        or not isinstance(part[1], Block)
      ):
        raise TypeError(
          f'Block.concat: each part must be a (size, Block) pair, got {part!r}.'
        )
      if part[1].parts:
        raise ValueError(
          'Block.concat: parts cannot themselves be concatenated.'
        )
      checked.append(part)
    if not checked:
      raise ValueError('Block.concat: give at least one part.')
    return cls(kept_axes=(), concat_axis=axis, parts=tuple(checked))

  def __repr__(self) -> str:
    if self.parts:
      inner = ', '.join(f'({size}, {rule!r})' for size, rule in self.parts)
      return f'Block.concat({self.concat_axis}, [{inner}])'
    if self.head_axis is not None:
      along = f', along={self.kept_axes}' if self.kept_axes else ''
      return f'Block.heads({self.head_axis}, {self.head_dim}{along})'
    if self.kept_axes is None:
      return 'Block.elementwise()'
    if not self.kept_axes:
      return 'Block.whole()'
    return f'Block.along({", ".join(map(str, self.kept_axes))})'


def _as_axes(axes, where: str) -> tuple[int, ...]:
  axes = tuple(axes)
  for axis in axes:
    if not isinstance(axis, int) or isinstance(axis, bool):
      raise TypeError(f'{where}: axes must be ints, got {axes!r}.')
  return axes


class LeafPlan(NamedTuple):
  """A :class:`Block` bound to one leaf shape (all axes non-negative).

  ``view_shape`` is the leaf's shape with the head axis split (or the shape
  itself); ``reduce_axes`` are the view axes averaged into one ``v``;
  ``v_shape`` is the stored ``v``'s shape (the view with reduced axes at 1).
  ``reduce_axes is None`` means elementwise. ``head_axis`` is the leaf axis
  split into ``(heads, head_dim)``, at view axes ``head_axis`` and
  ``head_axis + 1``, or ``None``.
  """

  shape: tuple[int, ...]
  view_shape: tuple[int, ...]
  reduce_axes: tuple[int, ...] | None
  v_shape: tuple[int, ...]
  head_axis: int | None = None


class ConcatPlan(NamedTuple):
  """A fused leaf: consecutive parts along ``axis``, one plan each."""

  shape: tuple[int, ...]
  axis: int
  sizes: tuple[int, ...]
  plans: tuple[LeafPlan, ...]


Plan = Union[LeafPlan, ConcatPlan]


def bind(block: Block, shape: Sequence[int], where: str = 'leaf') -> Plan:
  """Validates ``block`` against ``shape`` and resolves its axes.

  Args:
    block: the rule.
    shape: the leaf's shape.
    where: the leaf's path, used in error messages.

  Returns:
    The leaf's plan.

  Raises:
    TypeError: if ``block`` is not a :class:`Block`.
    ValueError: if an axis is out of range or repeated, or the head size or
      part sizes do not divide the axis.
  """
  if not isinstance(block, Block):
    raise TypeError(
      f'The partition gives {block!r} for {where}; expected an '
      'optax_adam_mini.Block.'
    )
  shape = tuple(int(d) for d in shape)
  context = f'{where} (shape {shape}) with {block!r}'
  if block.parts:
    axis = _normalize_axis(block.concat_axis, len(shape), context)
    sizes = tuple(size for size, _ in block.parts)
    if sum(sizes) != shape[axis] or any(size <= 0 for size in sizes):
      raise ValueError(
        f'{context}: the part sizes {sizes} must be positive and add up to '
        f'the size {shape[axis]} of axis {axis}.'
      )
    plans = []
    for size, rule in block.parts:
      part_shape = shape[:axis] + (size,) + shape[axis + 1 :]
      plans.append(bind(rule, part_shape, f'{where} [part of size {size}]'))
    return ConcatPlan(shape, axis, sizes, tuple(plans))

  if block.kept_axes is None:
    if block.head_axis is not None:
      raise ValueError(f'{context}: an elementwise rule cannot split heads.')
    return LeafPlan(shape, shape, None, shape)

  kept = [_normalize_axis(a, len(shape), context) for a in block.kept_axes]
  if len(set(kept)) != len(kept):
    raise ValueError(f'{context}: axes {block.kept_axes} repeat an axis.')
  view_shape = shape
  head_axis = None
  if block.head_axis is not None:
    head_axis = _normalize_axis(block.head_axis, len(shape), context)
    if head_axis in kept:
      raise ValueError(
        f'{context}: the head axis {block.head_axis} is already kept.'
      )
    if shape[head_axis] % block.head_dim:
      raise ValueError(
        f'{context}: head_dim {block.head_dim} does not divide the size '
        f'{shape[head_axis]} of axis {head_axis}.'
      )
    num_heads = shape[head_axis] // block.head_dim
    view_shape = (
      shape[:head_axis] + (num_heads, block.head_dim) + shape[head_axis + 1 :]
    )
    # Axes after the split move one place right in the view.
    kept = [a + 1 if a > head_axis else a for a in kept] + [head_axis]
  kept_set = frozenset(kept)
  reduce_axes = tuple(a for a in range(len(view_shape)) if a not in kept_set)
  v_shape = tuple(
    1 if a in reduce_axes else d for a, d in enumerate(view_shape)
  )
  return LeafPlan(shape, view_shape, reduce_axes, v_shape, head_axis)


def _normalize_axis(axis: int, ndim: int, context: str) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(
      f'{context}: axis {axis} is out of range for a leaf of rank {ndim}.'
    )
  return axis % ndim


def num_blocks(plan: Plan) -> int:
  """How many ``v`` scalars the plan stores."""
  if isinstance(plan, ConcatPlan):
    return sum(num_blocks(p) for p in plan.plans)
  return math.prod(plan.v_shape)


def v_shapes(plan: Plan):
  """The stored ``v`` shape, or a tuple of shapes for a fused leaf."""
  if isinstance(plan, ConcatPlan):
    return tuple(p.v_shape for p in plan.plans)
  return plan.v_shape


def _split(x: jax.Array, plan: ConcatPlan) -> list[jax.Array]:
  offsets = [0]
  for size in plan.sizes[:-1]:
    offsets.append(offsets[-1] + size)
  return [
    jax.lax.slice_in_dim(x, start, start + size, axis=plan.axis)
    for start, size in zip(offsets, plan.sizes)
  ]


def block_mean_square(g: jax.Array, plan: Plan):
  """``mean(g**2)`` over each block, in float32, shaped like the stored ``v``.

  Elementwise plans return ``g**2``. A fused leaf returns a tuple, one entry
  per part.
  """
  if isinstance(plan, ConcatPlan):
    return tuple(
      block_mean_square(part, p) for part, p in zip(_split(g, plan), plan.plans)
    )
  g = g.astype(jnp.float32)
  if plan.reduce_axes is None:
    return g**2
  split = plan.head_axis
  if split is None:
    return jnp.mean(g**2, axis=plan.reduce_axes, keepdims=True)
  # Heads: reduce the other axes first and split only the small result, so
  # the full-size gradient is never reshaped (a reshape of an axis whose
  # shards cut through heads would gather it, or fail under Explicit mode).
  other = tuple(
    a if a < split else a - 1
    for a in plan.reduce_axes
    if a not in (split, split + 1)
  )
  sums = jnp.sum(g**2, axis=other, keepdims=True)
  num_heads = plan.view_shape[split]
  sums = _unshard_axis_unless_divides(sums, split, num_heads)
  sums = sums.reshape(
    sums.shape[:split]
    + plan.view_shape[split : split + 2]
    + sums.shape[split + 1 :]
  )
  size = math.prod(plan.view_shape[a] for a in plan.reduce_axes)
  return jnp.sum(sums, axis=split + 1, keepdims=True) / size


def divide_by_blocks(x: jax.Array, denominator, plan: Plan) -> jax.Array:
  """``x / denominator``, broadcasting each block's scalar over its block."""
  if isinstance(plan, ConcatPlan):
    pieces = [
      divide_by_blocks(part, d, p)
      for part, d, p in zip(_split(x, plan), denominator, plan.plans)
    ]
    return jnp.concatenate(pieces, axis=plan.axis)
  if plan.reduce_axes is None:
    return x / denominator
  split = plan.head_axis
  if split is None:
    return x / denominator
  # Heads: spread each head's scalar over its head_dim columns (a small
  # array) rather than reshaping the full-size x.
  view = denominator.shape[: split + 1] + (plan.view_shape[split + 1],)
  view += denominator.shape[split + 2 :]
  denominator = jnp.broadcast_to(denominator, view)
  merged = view[:split] + (view[split] * view[split + 1],) + view[split + 2 :]
  return x / denominator.reshape(merged)


def _unshard_axis_unless_divides(x: jax.Array, axis: int, parts: int):
  """Under Explicit sharding, replicates ``axis`` if its shards cut ``parts``.

  Splitting an axis into ``(parts, rest)`` keeps its sharding only if the
  mesh axes on it divide ``parts``; otherwise (a shard holds part of a head)
  the small array is replicated along ``axis`` first. A no-op in Auto mode.
  """
  typeof = getattr(jax, 'typeof', None)
  sharding = getattr(typeof(x) if typeof else None, 'sharding', None)
  spec = getattr(sharding, 'spec', None)
  if spec is None or len(spec) <= axis or spec[axis] is None:
    return x
  names = spec[axis] if isinstance(spec[axis], tuple) else (spec[axis],)
  if parts % math.prod(sharding.mesh.shape[name] for name in names) == 0:
    return x
  entries = list(spec) + [None] * (x.ndim - len(spec))
  entries[axis] = None
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec(*entries))
