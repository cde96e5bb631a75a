"""A per-leaf report of blocks and of the state's memory against AdamW."""

from __future__ import annotations

import collections
import math
import warnings
from typing import NamedTuple

import jax
import optax

from optax_adam_mini import block as block_lib
from optax_adam_mini import flax_metadata, quantize
from optax_adam_mini import partition as partition_lib
from optax_adam_mini.annotations import leaf_infos
from optax_adam_mini.default_partition import classify as classify_path
from optax_adam_mini.default_partition import describe, label_function
from optax_adam_mini.layout import Layout, Role
from optax_adam_mini.transform import scale_by_adam_mini


class LeafReport(NamedTuple):
  """One leaf: its path, shape, role, detected layout, block and ``v`` shape.

  ``layout`` is what the default partition detected (which axes are layers,
  heads, in, out, ...; ``None`` under a partition of your own) and
  ``source`` where it came from (axis names, ``layouts=``, names and shape).
  ``mu`` says how ``m`` is stored (a dtype, or the codes and their groups)
  and ``state_bytes`` counts this leaf's ``m`` and ``v``.
  """

  path: str
  shape: tuple[int, ...]
  role: Role
  rule: block_lib.Block
  num_blocks: int
  v_shape: tuple
  layout: Layout | None = None
  source: str = 'partition='
  mu: str = ''
  state_bytes: int = 0


class RoleCount(NamedTuple):
  leaves: int
  params: int
  blocks: int


class PartitionReport(NamedTuple):
  """What :func:`partition_report` found; ``str()`` gives a table.

  Attributes:
    leaves: one :class:`LeafReport` per leaf, in ``jax.tree.leaves`` order.
    roles: per role, the number of leaves, parameters and blocks.
    state_bytes: bytes of the ``adam_mini`` state (count, ``mu`` and ``v``).
    adamw_state_bytes: bytes of ``optax.adamw``'s state on the same params.
    warnings: the warnings issued about unrecognised transformer parts.
  """

  leaves: list[LeafReport]
  roles: dict[Role, RoleCount]
  state_bytes: int
  adamw_state_bytes: int
  warnings: list[str]

  @property
  def state_ratio(self) -> float:
    """``state_bytes / adamw_state_bytes``."""
    return self.state_bytes / max(self.adamw_state_bytes, 1)

  def __str__(self) -> str:
    header = (
      'path',
      'shape',
      'layout',
      'rule',
      'blocks',
      'v shape',
      'm',
      'state bytes',
    )
    rows = [header] + [
      (
        leaf.path,
        str(leaf.shape),
        str(leaf.layout) if leaf.layout else leaf.role.value,
        repr(leaf.rule),
        f'{leaf.num_blocks:,}',
        str(leaf.v_shape),
        leaf.mu,
        f'{leaf.state_bytes:,}',
      )
      for leaf in self.leaves
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
      '  '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows
    ]
    lines.insert(1, '  '.join('-' * w for w in widths))
    lines.append('')
    lines.append('role           leaves        params        blocks')
    for role, count in self.roles.items():
      lines.append(
        f'{role.value:<13}{count.leaves:>8,}{count.params:>14,}'
        f'{count.blocks:>14,}'
      )
    lines.append('')
    lines.append(
      f'optimizer state: {self.state_bytes:,} bytes, '
      f'{self.state_ratio:.4f} of optax.adamw ({self.adamw_state_bytes:,} '
      'bytes)'
    )
    lines.extend(f'warning: {message}' for message in self.warnings)
    return '\n'.join(lines)


def tree_bytes(tree) -> int:
  """Total bytes of a pytree of arrays or ``ShapeDtypeStruct``s."""
  return sum(
    math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)
  )


def partition_report(
  params,
  partition: partition_lib.Partition | None = None,
  *,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
  layouts=None,
  strict: bool = False,
  block_rules: str = 'reference',
  mu_dtype=None,
) -> PartitionReport:
  """Reports each leaf's layout and block, and the state's bytes against AdamW.

  Takes the same partition options as :func:`adam_mini`. Works on
  ``jax.ShapeDtypeStruct`` params (nothing is allocated). Warns
  (``warnings.warn``) where the default partition does (a leaf of a
  transformer it does not recognise), and when a tree that looks like a
  transformer (it has an attention leaf) has no recognised embedding, output,
  query/key or MLP leaf: that usually means a naming convention the default
  partition does not know.

  >>> import jax, jax.numpy as jnp
  >>> from optax_adam_mini import partition_report
  >>> params = {'mlp': {'kernel': jax.ShapeDtypeStruct((4, 8), jnp.float32)}}
  >>> report = partition_report(params)
  >>> report.leaves[0].v_shape, round(report.state_ratio, 3)
  ((1, 8), 0.631)
  >>> print(report.leaves[0].layout)
  mlp: in out
  >>> report = partition_report(params, mu_dtype=jnp.int4)
  >>> report.leaves[0].mu, report.leaves[0].state_bytes  # below min_size
  ('float32', 160)
  """
  options = dict(
    num_heads=num_heads,
    num_kv_heads=num_kv_heads,
    head_dim=head_dim,
    value_blocks=value_blocks,
    layouts=layouts,
    strict=strict,
    block_rules=block_rules,
  )
  label = label_function(partition, **options)
  resolved, treedef = partition_lib.resolve(label, params)
  messages = []
  if partition is None:
    decisions, messages = describe(params, **options)
    details = [(d.role, d.layout, d.source) for d in decisions]
  else:
    details = [
      (classify_path(info.path), None, 'partition=')
      for info in leaf_infos(params)
    ]
  state = jax.eval_shape(
    scale_by_adam_mini(partition=label, mu_dtype=mu_dtype).init, params
  )
  # Each leaf's own m and v, found in the state as update finds them.
  _, quantization = quantize.resolve_mu_dtype(mu_dtype)
  plans = [x.plan for x in resolved]
  group_layouts = [
    quantize.leaf_layout(quantization, path, plan)
    for path, plan in zip(state.blocks.paths, plans)
  ]
  mus = flax_metadata.mu_leaves(params, treedef, group_layouts, state.mu)
  vs = flax_metadata.v_treedef(params, treedef, plans).flatten_up_to(state.v)
  leaves = []
  roles: dict[Role, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
  for leaf, (role, layout, source), group_layout, mu, v in zip(
    resolved, details, group_layouts, mus, vs
  ):
    blocks = block_lib.num_blocks(leaf.plan)
    leaves.append(
      LeafReport(
        partition_lib.path_str(leaf.path),
        tuple(leaf.leaf.shape),
        role,
        leaf.block,
        blocks,
        block_lib.v_shapes(leaf.plan),
        layout,
        source,
        _describe_mu(mu, group_layout),
        tree_bytes(mu) + tree_bytes(v),
      )
    )
    count = roles[role]
    count[0] += 1
    count[1] += math.prod(leaf.leaf.shape)
    count[2] += blocks
  adamw_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  messages += _missing_parts(set(roles))
  for message in messages:
    warnings.warn(message, stacklevel=2)
  return PartitionReport(
    leaves=leaves,
    roles={role: RoleCount(*count) for role, count in roles.items()},
    state_bytes=tree_bytes(state),
    adamw_state_bytes=tree_bytes(adamw_state),
    warnings=messages,
  )


def _describe_mu(mu, group_layout) -> str:
  if group_layout is None:
    return str(mu.dtype)
  return (
    f'int{group_layout.bits} {group_layout.code}, groups of '
    f'{group_layout.group_size} on axis {group_layout.axis}'
  )


_ATTENTION_ROLES = {
  Role.QUERY,
  Role.KEY,
  Role.VALUE,
  Role.ATTENTION_OUT,
  Role.FUSED_QKV,
}


def _missing_parts(found: set[Role]) -> list[str]:
  if not found & _ATTENTION_ROLES:
    return []
  expected = {
    'embedding': {Role.EMBEDDING},
    'output (LM head; ignore this if it is tied to the embedding)': {
      Role.OUTPUT
    },
    'query/key': {Role.QUERY, Role.KEY, Role.FUSED_QKV},
    'MLP': {Role.MLP},
  }
  return [
    f'This tree looks like a transformer but no leaf was recognised as its '
    f'{part}. If it has one under another name, that leaf gets a generic '
    'block: check the report, or pass a partition of your own.'
    for part, roles in expected.items()
    if not found & roles
  ]
