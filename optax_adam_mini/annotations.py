"""What a param tree says about its own leaves: paths, labels, axis names.

Model libraries wrap their params in pytree nodes that carry metadata:

* Flax Linen ``nn.LogicallyPartitioned`` boxes hold logical axis names
  (MaxText annotates every param: ``('embed', 'layers', 'q_heads', 'kv')``);
  ``nn.Partitioned`` holds mesh axis names, which say nothing about layout;
* Flax NNX ``Variable``s hold sharding names in their metadata
  (``out_sharding``, ``sharding_names`` or ``sharding``);
* penzai ``NamedArray``s name their trailing axes (``named_axes``) and its
  parameter values carry a ``label`` (the param's path in the model);
* haliax ``NamedArray``s name every axis (``axes``).

:func:`leaf_infos` walks a tree through these wrappers and gives each array
leaf its path (the keys into the wrappers dropped; a penzai label replaces
the path), its shape and its axis names, if any. Nothing here imports those
libraries: wrappers are recognised by their types (Flax, from
``sys.modules``) or their class names and attributes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from optax_adam_mini.partition import Path, path_names

AxisNames = tuple  # one name (str) or None per axis


class LeafInfo(NamedTuple):
  """One array leaf, as its wrappers describe it.

  Attributes:
    path: the param's path: key names from the root to the outermost wrapper
      (or to the array), or a wrapper's label split at ``/`` and ``.``.
    shape: the leaf's shape.
    axis_names: per axis, the name a wrapper gives it (``None`` where it gives
      none), or ``None`` if no wrapper names the axes.
    names_source: where the names come from (``'flax logical'``, ``'nnx'``,
      ``'penzai'``, ``'haliax'``), or ``None``.
    dtype: the leaf's dtype, if it has one.
    wrapper: the kind of the outermost wrapper (``'linen'``, ``'nnx'``,
      ``'penzai'``, ``'haliax'``), or ``None`` for a bare array: which
      library's conventions a leaf follows, where names alone do not say.
  """

  path: Path
  shape: tuple[int, ...]
  axis_names: AxisNames | None = None
  names_source: str | None = None
  wrapper: str | None = None
  dtype: Any = None


def _flax_types() -> tuple[type, ...]:
  types = []
  meta = sys.modules.get('flax.core.meta')
  if meta is not None:
    types.append(meta.AxisMetadata)
  variablelib = sys.modules.get('flax.nnx.variablelib')
  if variablelib is not None:
    types.append(variablelib.Variable)
  return tuple(types)


_NNX_NAME_KEYS = ('out_sharding', 'sharding_names', 'sharding')


def _wrapper(x, flax_types) -> tuple[Any, ...] | None:
  """``(axis names, source, label, kind)`` if ``x`` is a wrapper, else None."""
  if flax_types and isinstance(x, flax_types):
    if hasattr(x, 'get_metadata'):  # an NNX Variable
      metadata = x.get_metadata()
      for key in _NNX_NAME_KEYS:
        names = metadata.get(key)
        if isinstance(names, (tuple, list)):
          return tuple(names), 'nnx', None, 'nnx'
      return None, None, None, 'nnx'
    if type(x).__name__ == 'LogicallyPartitioned':
      return tuple(x.names), 'flax logical', None, 'linen'
    # Mesh names (nn.Partitioned) or other metadata: nothing on layout.
    return None, None, None, 'linen'
  name = type(x).__name__
  if name in ('NamedArray', 'NamedArrayView') and hasattr(x, 'data_array'):
    return _penzai_names(x), 'penzai', None, 'penzai'
  if name == 'NamedArray' and hasattr(x, 'axes') and hasattr(x, 'array'):
    names = tuple(getattr(axis, 'name', None) for axis in x.axes)
    return names, 'haliax', None, 'haliax'
  label = getattr(x, 'label', None)
  if isinstance(label, str) and hasattr(x, 'value') and 'Parameter' in name:
    return None, None, label, 'penzai'
  return None


def _penzai_names(x) -> AxisNames:
  """Per data axis of a penzai named array, its name (positional: None)."""
  rank = len(x.data_array.shape)
  names: list[str | None] = [None] * rank
  by_axis = getattr(x, 'data_axis_for_name', None)
  if isinstance(by_axis, Mapping):  # a NamedArrayView
    for name, axis in by_axis.items():
      names[axis] = name
    return tuple(names)
  named = list(getattr(x, 'named_axes', {}) or {})
  for offset, name in enumerate(named):  # named axes are the trailing ones
    names[rank - len(named) + offset] = name
  return tuple(names)


def _split_dots(path: Path) -> Path:
  """Dotted keys (``'block_0.attn.query.weights'``, PyTorch-style flat
  dicts, penzai v1 labels) as one segment per name."""
  return tuple(
    part for name in path for part in str(name).split('.') if part != ''
  )


def leaf_infos(tree) -> list[LeafInfo]:
  """Every array leaf of ``tree``, in ``jax.tree.leaves`` order."""
  flax_types = _flax_types()
  infos: list[LeafInfo] = []

  def is_wrapper(x):
    return _wrapper(x, flax_types) is not None

  def visit(node, prefix: Path, names, source, kind, inside: bool):
    children = jax.tree_util.tree_flatten_with_path(
      node, is_leaf=lambda x: x is not node and is_wrapper(x)
    )[0]
    for key_path, child in children:
      path = prefix if inside else prefix + _split_dots(path_names(key_path))
      found = _wrapper(child, flax_types) if child is not node else None
      if found is None:
        shape = tuple(getattr(child, 'shape', None) or np.shape(child))
        source = source if names else None
        dtype = getattr(child, 'dtype', None)
        infos.append(LeafInfo(path, shape, names, source, kind, dtype))
        continue
      child_names, child_source, label, child_kind = found
      if label is not None:
        path = _split_dots(tuple(label.split('/')))
      visit(
        child,
        path,
        child_names if child_names is not None else names,
        child_source if child_names is not None else source,
        kind or child_kind,
        inside=True,
      )

  visit(tree, (), None, None, None, inside=False)
  return infos
