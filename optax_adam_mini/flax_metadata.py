"""Flax sharding metadata on ``v`` and quantized ``mu``: boxes in the state.

Flax keeps a param's sharding names in a box around it (Linen's
``nn.Partitioned`` / ``LogicallyPartitioned``, NNX ``Variable`` metadata), and
copies the box onto optimizer-state leaves that mirror the param tree. For a
float ``mu`` that is right; for Adam-mini's ``v`` it is not: ``v`` is reduced,
and a head split adds an axis. This module rebuilds each box around ``v`` with
the names of the axes ``v`` keeps and ``None`` on the axes it averages over,
and puts a copy of the param's box around each of a quantized ``mu``'s codes
and scales (both keep the param's axes; groups never cross a shard).
Flax is never imported here; its box types are found in ``sys.modules``.
"""

from __future__ import annotations

import dataclasses
import math
import sys

import jax

from optax_adam_mini import block as block_lib
from optax_adam_mini import quantize


def _flax_box_types() -> tuple[type, ...]:
  """Flax's metadata boxes, if Flax is loaded (never imported from here)."""
  types = []
  meta = sys.modules.get('flax.core.meta')
  if meta is not None:
    types.append(meta.AxisMetadata)
  variablelib = sys.modules.get('flax.nnx.variablelib')
  if variablelib is not None:
    types.append(variablelib.Variable)
  return tuple(types)


def v_tree(tree, treedef, v_leaves, plans):
  """``v``'s pytree: ``tree``'s structure holding the ``v`` leaves.

  Flax boxes (``nn.Partitioned``, NNX ``Variable``s) around a param carry its
  sharding names, one per param axis. Copied onto ``v`` they would be wrong
  (``v`` is reduced, and a head split adds an axis), so each box around a
  ``v`` gets the names of the axes ``v`` keeps, ``None`` on reduced axes.
  """
  boxes = _flax_box_types()
  is_box = lambda x: isinstance(x, boxes)  # noqa: E731
  if not boxes or not any(map(is_box, jax.tree.leaves(tree, is_leaf=is_box))):
    return jax.tree_util.tree_unflatten(treedef, v_leaves)
  pending = iter(zip(v_leaves, plans))

  def one(x):
    v, plan = next(pending)
    return _rebox(x, v, plan) if is_box(x) else v

  return jax.tree.map(one, tree, is_leaf=is_box)


def v_treedef(tree, treedef, plans):
  """The treedef of ``v`` down to one entry per param leaf (see `v_tree`)."""
  leaf = object()
  return jax.tree.structure(
    v_tree(tree, treedef, [leaf] * len(plans), plans),
    is_leaf=lambda x: x is leaf,
  )


def mu_tree(tree, treedef, mu_leaves, layouts):
  """``mu``'s pytree: ``tree``'s structure holding the ``mu`` leaves.

  A float ``mu`` leaf takes its param's box, as the treedef gives it. A
  quantized one (a :class:`~optax_adam_mini.QuantizedArray`) gets the box
  around each of its codes and scales instead of around the pair.
  """
  out = jax.tree_util.tree_unflatten(treedef, mu_leaves)
  boxes = _flax_box_types()
  if not boxes or all(layout is None for layout in layouts):
    return out
  is_box = lambda x: isinstance(x, boxes)  # noqa: E731
  pending = iter(
    layout for x, layout in zip(jax.tree.leaves(tree, is_leaf=is_box), layouts)
    if is_box(x)
  )  # fmt: skip

  def one(x):
    if not is_box(x):
      return x
    layout = next(pending)
    value = x.get_value() if hasattr(x, 'get_value') else x.value
    if not isinstance(value, quantize.QuantizedArray):
      return x
    _check_names(x, layout)
    return quantize.QuantizedArray(*(_copy_box(x, part) for part in value))

  return jax.tree.map(one, out, is_leaf=is_box)


def mu_leaves(tree, treedef, layouts, mu):
  """``mu``'s entries, one per param leaf (a `QuantizedArray` or an array)."""
  leaf = object()
  skeleton = [
    leaf if layout is None else quantize.QuantizedArray(leaf, leaf)
    for layout in layouts
  ]
  structure = jax.tree.structure(
    mu_tree(tree, treedef, skeleton, layouts), is_leaf=lambda x: x is leaf
  )
  flat = iter(structure.flatten_up_to(mu))
  return [
    next(flat)
    if layout is None
    else quantize.QuantizedArray(next(flat), next(flat))
    for layout in layouts
  ]


def _copy_box(box, value):
  """A copy of Flax box ``box`` (same metadata) around ``value``."""
  if hasattr(box, 'get_metadata'):  # an NNX Variable
    if hasattr(type(box), 'from_metadata'):
      return type(box).from_metadata(value, dict(box.get_metadata()))
    return type(box)(value, **box.get_metadata())  # pragma: no cover
  return dataclasses.replace(box, value=value)


def _check_names(box, layout) -> None:
  """Raises if the box's mesh axes on the group axis would cut a group."""
  if hasattr(box, 'get_metadata'):
    metadata = box.get_metadata()
    rules = metadata.get('sharding_rules')
    names = next(
      (metadata[key] for key in ('out_sharding', 'sharding_names', 'sharding')
       if metadata.get(key) is not None),
      None,
    )  # fmt: skip
  else:
    names, rules = getattr(box, 'names', None), getattr(box, 'rules', None)
  if not isinstance(names, (tuple, list)) or len(names) != len(layout.shape):
    return
  groups = layout.shape[layout.axis] // layout.group_size
  if not _mesh_axes_divide(names[layout.axis], groups, rules):
    raise ValueError(
      f'Quantized m of {layout.path} (shape {layout.shape}) sharded as '
      f'{tuple(names)}: its {groups} groups of {layout.group_size} along '
      f'axis {layout.axis} cannot be split evenly over the mesh axes of '
      f'{names[layout.axis]!r}; use a MomentQuantization(group_size=...) that '
      'gives a divisible number of groups, or shard another axis.'
    )


def _rebox(box, v, plan):
  """A copy of Flax box ``box`` around ``v``, with ``v``'s sharding names."""
  if hasattr(box, 'get_metadata'):  # an NNX Variable
    metadata = dict(box.get_metadata())
    for key in ('out_sharding', 'sharding_names', 'sharding',
                'optimizer_sharding'):  # fmt: skip
      if metadata.get(key) is not None:
        names = _v_names(metadata[key], plan, metadata.get('sharding_rules'))
        if names is None:
          del metadata[key]
        else:
          metadata[key] = names
    if hasattr(type(box), 'from_metadata'):
      return type(box).from_metadata(v, metadata)
    return type(box)(v, **metadata)  # pragma: no cover - older Flax
  names = _v_names(
    getattr(box, 'names', None), plan, getattr(box, 'rules', None)
  )
  if names is None or not dataclasses.is_dataclass(box):
    return v  # unknown metadata: leave v bare (replicated) rather than wrong
  return dataclasses.replace(box, value=v, names=names)


def _v_names(names, plan: block_lib.Plan, rules=None):
  """A param's per-axis sharding names mapped onto its ``v``, or ``None``."""
  if (
    not isinstance(names, (tuple, list))
    or isinstance(plan, block_lib.ConcatPlan)
    or len(names) != len(plan.shape)
  ):
    return None
  names = tuple(names)
  if plan.reduce_axes is None:
    return names
  split = plan.head_axis
  if split is not None:
    head = names[split]
    if not _mesh_axes_divide(head, plan.view_shape[split], rules):
      head = None  # a shard would hold part of a head: replicate v there
    names = names[:split] + (head, None) + names[split + 1 :]
  return tuple(
    None if a in plan.reduce_axes else name for a, name in enumerate(names)
  )


def _mesh_axes_divide(name, size: int, rules=None) -> bool:
  """Whether the mesh axes that ``name`` stands for divide ``size``.

  ``name`` is a mesh axis (or a tuple of them) of the context mesh, or a Flax
  logical name resolved by ``rules`` (the box's own, else Flax's context
  rules). Names that resolve to no axis of the context mesh pass.
  """
  get_mesh = getattr(jax.sharding, 'get_abstract_mesh', None)
  mesh = get_mesh() if get_mesh is not None else None
  axis_sizes = dict(getattr(mesh, 'shape', None) or {})
  if rules is None:
    spmd = sys.modules.get('flax.linen.spmd')
    rules = spmd.get_logical_axis_rules() if spmd is not None else ()
  resolved = dict(reversed(tuple(rules or ())))  # the first rule wins
  names = name if isinstance(name, (tuple, list)) else (name,)
  axes = []
  for n in names:
    n = n if n in axis_sizes else resolved.get(n)
    axes.extend(n if isinstance(n, (tuple, list)) else (n,))
  if not all(a in axis_sizes for a in axes if a is not None):
    return True
  return size % math.prod(axis_sizes[a] for a in axes if a is not None) == 0


_REGISTERED: set[type] = set()


def register_static_state(cls: type) -> None:
  """Lets ``flax.serialization`` save a state holding ``cls`` (if loaded).

  ``cls`` carries no arrays (it is static pytree structure), so it saves as
  an empty dict and restores as the target's own value.
  """
  serialization = sys.modules.get('flax.serialization')
  if serialization is None or cls in _REGISTERED:
    return
  try:
    serialization.register_serialization_state(
      cls, lambda _: {}, lambda target, _: target
    )
  except ValueError:  # pragma: no cover - registered by another copy
    pass
  _REGISTERED.add(cls)
