"""What each axis of a leaf is, and the block that follows from it.

A :class:`Layout` is a leaf's role in the transformer plus the kind of each of
its axes. The role and the kinds decide the block (:func:`block_for`), wherever
the axes sit:

============  ===============================================================
kind          meaning
============  ===============================================================
``layers``    stacked copies: scanned layers, experts, the gate and up halves
              of a fused MLP kernel. Always kept: each copy its own blocks.
``heads``     attention heads (query, key/value or grouped heads).
``head_dim``  coordinates within one head.
``in``        a fan-in axis (the input features of a projection).
``out``       a fan-out axis (output neurons). For a query or key whose heads
              are flattened into one axis, that axis: it is split into heads.
``vocab``     tokens (or positions) of an embedding table or LM head.
``parts``     the parts of a fused projection (q|k|v, k|v, k_nope|v).
============  ===============================================================

One ``v`` per index of the kept kinds, averaged over the others:

================================  ===========================================
role                              kept
================================  ===========================================
query, key                        layers, heads (flattened heads are split)
value                             layers, heads, head_dim, out (every output
                                  neuron); ``value_blocks='whole'``: layers
attention out, MLP, dense, router layers, out
embedding                         layers, vocab
LM head (output)                  layers, vocab, out
norm scale, anything else         layers
bias                              every axis (plain Adam)
fused q/k/v                       each part by its own role
================================  ===========================================

Those are the reference's rules (``block_rules='reference'``, the default).
``block_rules='slim'`` applies SlimAdam's rules by layer type (Kalra et al.,
arXiv 2503.01843: from the signal-to-noise ratio of Adam's ``v`` along each
axis, queries and keys favour averaging over fan-in, values, attention
outputs and MLPs over fan-out, and norm scales no averaging):

================================  ===========================================
role                              kept (``block_rules='slim'``)
================================  ===========================================
query, key                        layers, heads, head_dim, out (every output
                                  neuron)
value, MLP                        layers, in (every input neuron);
                                  ``value_blocks='whole'``: layers
attention out                     layers, heads, head_dim, in (every input
                                  neuron)
norm scale                        every axis (plain Adam)
the others                        as the reference's
================================  ===========================================

A layout can be written as a string, ``'<role>: <kind> <kind> ...'``, one kind
per axis:

>>> from optax_adam_mini.layout import Layout
>>> Layout.parse('query: in layers heads head_dim')
Layout('query: in layers heads head_dim')
>>> block_for(Layout.parse('query: in layers heads head_dim'), (8, 2, 4, 2))
Block.along(1, 2)
>>> block_for(Layout.parse('mlp: layers in out'), (2, 8, 16))
Block.along(0, 2)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Protocol

from optax_adam_mini.block import Block


class Role(enum.Enum):
  """What a leaf is in a transformer; decides its default block."""

  EMBEDDING = 'embedding'
  OUTPUT = 'output'
  QUERY = 'query'
  KEY = 'key'
  VALUE = 'value'
  ATTENTION_OUT = 'attention_out'
  FUSED_QKV = 'fused_qkv'
  MLP = 'mlp'
  ROUTER = 'router'
  DENSE = 'dense'
  NORM = 'norm'
  BIAS = 'bias'
  OTHER = 'other'


KINDS = ('layers', 'heads', 'head_dim', 'in', 'out', 'vocab', 'parts')

# Each role's kept kinds; ``EVERY_AXIS``: one ``v`` per coordinate.
EVERY_AXIS = frozenset(KINDS)
_REFERENCE_RULES = {
  Role.QUERY: {'layers', 'heads'},
  Role.KEY: {'layers', 'heads'},
  Role.VALUE: {'layers', 'heads', 'head_dim', 'out'},
  Role.ATTENTION_OUT: {'layers', 'out'},
  Role.MLP: {'layers', 'out'},
  Role.ROUTER: {'layers', 'out'},
  Role.DENSE: {'layers', 'out'},
  Role.EMBEDDING: {'layers', 'vocab'},
  Role.OUTPUT: {'layers', 'vocab', 'out'},
  Role.NORM: {'layers'},
  Role.OTHER: {'layers'},
}
_SLIM_RULES = {
  **_REFERENCE_RULES,
  Role.QUERY: {'layers', 'heads', 'head_dim', 'out'},
  Role.KEY: {'layers', 'heads', 'head_dim', 'out'},
  Role.VALUE: {'layers', 'in'},
  Role.ATTENTION_OUT: {'layers', 'heads', 'head_dim', 'in'},
  Role.MLP: {'layers', 'in'},
  Role.NORM: EVERY_AXIS,
}
BLOCK_RULES = {'reference': _REFERENCE_RULES, 'slim': _SLIM_RULES}

# The roles of a fused leaf's parts, by their number, where not given.
_PART_ROLES = {
  3: (Role.QUERY, Role.KEY, Role.VALUE),
  2: (Role.KEY, Role.VALUE),
}


@dataclasses.dataclass(frozen=True)
class Layout:
  """A leaf's role and the kind of each of its axes (see the module doc).

  Attributes:
    role: the leaf's :class:`Role`.
    axes: one kind per axis of the leaf, from :data:`KINDS`.
    parts: for a fused leaf, ``(role, size)`` or ``(role, size, kind)`` per
      part along its ``parts`` axis, ``kind`` being what that axis is inside
      the part (see ``part_kind``); ``None`` where the parts axis holds one
      coordinate per part (q, k, v stacked on an axis of size 3) or the sizes
      follow from head counts.
    part_kind: what the parts axis is inside each part, where ``parts`` does
      not say: ``'heads'`` for q|k|v heads along one axis; by default
      ``'layers'`` for parts of one coordinate, ``'head_dim'`` beside a heads
      axis, else ``'out'``.
  """

  role: Role
  axes: tuple[str, ...]
  parts: tuple[tuple, ...] | None = None
  part_kind: str | None = None

  def __post_init__(self):
    if not isinstance(self.role, Role):
      raise TypeError(f'Layout: role must be a Role, got {self.role!r}.')
    for kind in self.axes:
      if kind not in KINDS:
        raise ValueError(
          f'Layout: unknown axis kind {kind!r}; the kinds are '
          f'{", ".join(KINDS)}.'
        )
    if (self.parts is not None or self.role is Role.FUSED_QKV) and list(
      self.axes
    ).count('parts') != 1:
      raise ValueError(
        f'Layout {self}: a fused leaf needs exactly one axis of kind parts.'
      )

  @classmethod
  def parse(cls, text: str) -> Layout:
    """A layout from ``'<role>: <kind> ...'`` (role names as in :class:`Role`)."""
    if not isinstance(text, str) or ':' not in text:
      raise ValueError(
        f"A layout string reads '<role>: <kind> <kind> ...', got {text!r}."
      )
    role_name, kinds = text.split(':', 1)
    role_name = role_name.strip().lower()
    roles = {role.value: role for role in Role}
    if role_name not in roles:
      raise ValueError(
        f'Layout {text!r}: unknown role {role_name!r}; the roles are '
        f'{", ".join(roles)}.'
      )
    return cls(roles[role_name], tuple(kinds.split()))

  def __str__(self) -> str:
    text = f'{self.role.value}: {" ".join(self.axes)}'
    if self.parts is not None:
      sizes = ', '.join(f'{role.value} {size}' for role, size in self.parts)
      text += f' (parts: {sizes})'
    return text

  def __repr__(self) -> str:
    return f'Layout({str(self)!r})'


class Heads(Protocol):
  """Head sizes for axes whose heads are flattened (from the user's counts)."""

  def head_dim(self, role: Role, size: int) -> int:
    """Coordinates per head of a query or key axis of ``size`` outputs."""
    ...

  def qkv_parts(self, size: int, width: int) -> tuple[tuple[Role, int], ...]:
    """The parts, ``(role, size)`` in order, of a flattened q|k|v (or k|v)
    axis of ``size`` on a model of ``width``."""
    ...


class _NoHeadCounts:
  def head_dim(self, role, size):
    raise ValueError(
      f'the {role.value} heads are flattened into an axis of {size}; pass '
      'num_heads= (and num_kv_heads=) or head_dim='
    )

  def qkv_parts(self, size, width):
    raise ValueError(
      f'the q/k/v parts are flattened into an axis of {size}; pass '
      'num_heads= (and num_kv_heads=) or head_dim='
    )


def block_for(
  layout: Layout,
  shape: Sequence[int],
  heads: Heads | None = None,
  value_blocks: str = 'neuron',
  block_rules: str = 'reference',
) -> Block:
  """The Adam-mini block of a leaf of ``shape`` laid out as ``layout``.

  Args:
    layout: the leaf's role and axis kinds.
    shape: the leaf's shape (one entry per kind).
    heads: head sizes for queries, keys or fused q/k/v whose heads are
      flattened into one axis (the default partition derives them from
      ``num_heads``, ``num_kv_heads`` and ``head_dim``).
    value_blocks: ``'neuron'`` or ``'whole'``, for value projections.
    block_rules: ``'reference'`` or ``'slim'`` (see the module doc).

  Returns:
    The leaf's :class:`Block`.

  Raises:
    ValueError: if the layout does not match the shape, or flattened heads
      cannot be sized.
  """
  shape = tuple(shape)
  heads = heads or _NoHeadCounts()
  if len(layout.axes) != len(shape):
    raise ValueError(
      f'layout {layout} names {len(layout.axes)} axes for a leaf of shape '
      f'{shape}'
    )
  if block_rules not in BLOCK_RULES:
    raise ValueError(
      f'block_rules must be one of {sorted(BLOCK_RULES)}, got {block_rules!r}.'
    )
  rules = BLOCK_RULES[block_rules]
  if layout.role is Role.BIAS:
    return Block.elementwise()
  if 'parts' in layout.axes and (
    layout.role is Role.FUSED_QKV or layout.parts is not None
  ):
    return _fused_block(layout, shape, heads, value_blocks, rules)
  kinds = tuple('layers' if k == 'parts' else k for k in layout.axes)
  return _plain_block(layout.role, kinds, shape, heads, value_blocks, rules)


def _plain_block(role, kinds, shape, heads: Heads, value_blocks, rules):
  kept = rules[role]
  if kept is EVERY_AXIS:
    return Block.elementwise()
  if role is Role.VALUE and value_blocks == 'whole':
    kept = {'layers'}
  if (
    role in (Role.QUERY, Role.KEY)
    and 'heads' not in kinds
    and 'out' not in kept
  ):
    flat = [a for a, kind in enumerate(kinds) if kind == 'out']
    if not flat and 'head_dim' in kinds:  # a single head: one v
      return Block.along(*(a for a, k in enumerate(kinds) if k in kept))
    if len(flat) != 1:
      raise ValueError(
        f'a {role.value} without a heads axis needs exactly one out axis '
        f'holding its flattened heads; got axes {" ".join(kinds)}'
      )
    (axis,) = flat
    along = tuple(a for a, kind in enumerate(kinds) if kind in kept)
    return Block.heads(axis, heads.head_dim(role, shape[axis]), along=along)
  return Block.along(*(a for a, kind in enumerate(kinds) if kind in kept))


def _fused_block(layout, shape, heads: Heads, value_blocks, rules) -> Block:
  """Each part of a fused leaf by its own role."""
  axis = layout.axes.index('parts')
  if layout.parts is not None:
    parts = layout.parts
  elif shape[axis] in _PART_ROLES:
    parts = tuple((role, 1) for role in _PART_ROLES[shape[axis]])
  else:
    # q|k|v flattened along one axis (GPT-2's c_attn): sizes from the heads.
    width = [s for s, k in zip(shape, layout.axes) if k == 'in']
    if len(width) != 1:
      raise ValueError(
        f'a flattened q|k|v leaf needs exactly one in axis; got {layout}'
      )
    parts = heads.qkv_parts(shape[axis], width[0])
  if sum(part[1] for part in parts) != shape[axis]:
    raise ValueError(
      f'the parts {[(p[0].value, p[1]) for p in parts]} do not add up to the '
      f'size {shape[axis]} of the parts axis of {layout}'
    )
  if layout.part_kind is not None:
    inner = layout.part_kind
  elif all(part[1] == 1 for part in parts):
    inner = 'layers'  # one coordinate per part: like a stacked copy
  elif 'heads' in layout.axes:
    inner = 'head_dim'  # parts of each head's coordinates (MLA's k|v)
  else:
    inner = 'out'  # parts of flattened outputs
  part_blocks = []
  for part in parts:
    role, size = part[:2]
    kind = part[2] if len(part) > 2 else inner
    kinds = tuple(kind if a == axis else k for a, k in enumerate(layout.axes))
    part_shape = shape[:axis] + (size,) + shape[axis + 1 :]
    block = _plain_block(role, kinds, part_shape, heads, value_blocks, rules)
    part_blocks.append((size, block))
  return Block.concat(axis, part_blocks)
