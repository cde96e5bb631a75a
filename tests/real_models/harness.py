"""Real models' param trees, rebuilt from fixtures, and their block partitions.

The fixtures (``fixtures/<library>/<model>.json``, written by
``make_fixtures.py`` in each library's own environment) record every leaf of
the tree a user of that library hands to ``tx.init``: its key path (with key
types), shape, dtype and the metadata wrappers around it (Flax boxes, NNX
Variables, penzai and haliax named arrays). This module rebuilds such a tree
with ``jax.ShapeDtypeStruct`` leaves, so the tests need none of those
libraries.

Two block partitions are compared per leaf, each as an array of block labels
(one int per coordinate; two coordinates share a label iff they share a
``v``):

* :func:`expected_labels` reads the expected spec that
  ``expected_<library>.py`` writes from the paper's rules and the library's
  own layout (never from ``optax_adam_mini``);
* :func:`library_labels` observes what ``scale_by_adam_mini`` actually does,
  through its public API only: it sets every stored ``v`` entry to a distinct
  value and takes one step with a gradient too small to change ``v``, so each
  coordinate's update is ``g / sqrt(v of its block)``.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import GetAttrKey

from optax_adam_mini import block as block_lib
from optax_adam_mini import scale_by_adam_mini

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'

# A gradient whose square underflows in float32 (so v keeps the values set
# below) but which itself does not: the update is then g / sqrt(v).
_TINY_GRAD = 1e-25


def fixture_names() -> list[str]:
  """Every fixture as ``'<library>/<model>'``, sorted."""
  return sorted(
    str(path.relative_to(FIXTURES).with_suffix(''))
    for path in FIXTURES.glob('*/*.json')
  )


@functools.cache
def load(name: str) -> dict:
  """The fixture ``'<library>/<model>'`` as a dict."""
  return json.loads((FIXTURES / f'{name}.json').read_text())


def expectations(fixture: dict) -> list[dict]:
  """The expected spec of every leaf, from ``expected_<library>.py``."""
  module = importlib.import_module(
    f'tests.real_models.expected_{fixture["library"]}'
  )
  return [module.expected(fixture, leaf) for leaf in fixture['leaves']]


# ----------------------------------------------------------------------------
# Rebuilding the tree


class _AttrNode:
  """A container whose children are attributes (``GetAttrKey`` paths)."""

  def __init__(self, **children):
    self.__dict__.update(children)

  def _flatten(self):
    names = sorted(self.__dict__)
    return [(GetAttrKey(n), self.__dict__[n]) for n in names], tuple(names)

  @classmethod
  def _unflatten(cls, names, children):
    return cls(**dict(zip(names, children)))


jax.tree_util.register_pytree_with_keys(
  _AttrNode, _AttrNode._flatten, _AttrNode._unflatten
)


class _FlatNode:
  """A container flattened without keys (``FlattenedIndexKey`` paths)."""

  def __init__(self, children):
    self.children = list(children)


jax.tree_util.register_pytree_node(
  _FlatNode,
  lambda node: (node.children, None),
  lambda _, children: _FlatNode(children),
)


@functools.cache
def _stand_in(type_name: str, static: tuple[str, ...]):
  """A pytree class named like a library's wrapper, with its static fields.

  Used for the wrappers of libraries the tests do not install (penzai,
  haliax): the class has the wrapper's name, its static fields as attributes
  and one child under the fixture's key; the live tests check the fixtures
  against the real classes.
  """

  def flatten(node):
    return [(GetAttrKey(node._child), getattr(node, node._child))], tuple(
      (name, _freeze(getattr(node, name))) for name in static
    ) + (node._child,)

  def unflatten(aux, children):
    node = object.__new__(cls)
    *fields, child = aux
    for name, value in fields:
      setattr(node, name, _thaw(value))
    node._child = child
    setattr(node, child, children[0])
    return node

  cls = type(type_name.rsplit('.', 1)[-1], (), {'__module__': type_name})
  jax.tree_util.register_pytree_with_keys(cls, flatten, unflatten)
  return cls


def _freeze(value):
  """A hashable copy of a JSON value (pytree aux data must be hashable)."""
  if isinstance(value, dict):
    return ('__dict__', tuple((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value):
  if isinstance(value, tuple) and value[:1] == ('__dict__',):
    return {k: _thaw(v) for k, v in value[1]}
  if isinstance(value, tuple):
    return [_thaw(v) for v in value]
  return value


class _HaliaxAxis(NamedTuple):
  name: str
  size: int


class _HaliaxNamedArray:
  """Stands in for haliax.NamedArray: ``array`` flattened without a key."""

  def __init__(self, array, axes):
    self.array = array
    self.axes = axes


jax.tree_util.register_pytree_node(
  _HaliaxNamedArray,
  lambda x: ((x.array,), x.axes),
  lambda axes, children: _HaliaxNamedArray(children[0], axes),
)
_HaliaxNamedArray.__name__ = 'NamedArray'


def _wrap(wrapper: dict, child_key: tuple[str, Any], value):
  """``value`` inside the wrapper the fixture describes."""
  kind = wrapper['type']
  if kind in ('flax.linen.LogicallyPartitioned', 'flax.linen.Partitioned'):
    from flax import linen as nn

    names = tuple(wrapper.get('names') or ())
    if kind == 'flax.linen.Partitioned':
      return nn.Partitioned(value, names)
    rules = wrapper.get('rules')
    rules = tuple(tuple(r) for r in rules) if rules else None
    return nn.LogicallyPartitioned(value, names, rules=rules)
  if kind.startswith('flax.nnx.'):
    from flax import nnx

    variable_type = getattr(nnx, kind.rsplit('.', 1)[-1])
    metadata = dict(nnx.Param(jnp.zeros(())).get_metadata())
    for key, entry in (wrapper.get('metadata') or {}).items():
      metadata[key] = tuple(entry) if isinstance(entry, list) else entry
    return variable_type.from_metadata(value, metadata)
  if kind == 'haliax.NamedArray':
    axes = tuple(_HaliaxAxis(name, size) for name, size in wrapper['axes'])
    return _HaliaxNamedArray(value, axes)
  fields = {k: v for k, v in wrapper.items() if k != 'type'}
  cls = _stand_in(kind, tuple(sorted(fields)))
  node = object.__new__(cls)
  for name, entry in fields.items():
    setattr(node, name, entry)
  node._child = child_key[1]
  setattr(node, child_key[1], value)
  return node


def _insert(container, path, wrappers, leaf):
  """Places ``leaf`` at ``path`` inside nested plain containers."""
  (kind, key), rest = path[0], path[1:]
  if len(rest) == len(wrappers):  # the rest of the path runs through wrappers
    value = leaf
    for wrapper, child_key in reversed(list(zip(wrappers, rest))):
      value = _wrap(wrapper, child_key, value)
    container.setdefault(kind, {})[key] = value
    return
  child = container.setdefault(kind, {}).setdefault(key, {})
  _insert(child, rest, wrappers, leaf)


def _materialize(node):
  """Turns the ``{kind: {key: child}}`` scaffolding into real containers."""
  if not isinstance(node, dict) or not node.keys() <= {
    'dict',
    'attr',
    'seq',
    'flat',
  }:
    return node
  if len(node) != 1:
    raise ValueError(f'a node mixes key types: {sorted(node)}')
  ((kind, children),) = node.items()
  children = {k: _materialize(v) for k, v in children.items()}
  if kind == 'dict':
    return children
  if kind == 'attr':
    return _AttrNode(**children)
  ordered = [children[i] for i in sorted(children)]
  return ordered if kind == 'seq' else _FlatNode(ordered)


def build_tree(fixture: dict, dtype=None):
  """The tree a user hands to ``tx.init``, with ``ShapeDtypeStruct`` leaves.

  ``dtype`` overrides every floating leaf's dtype (the partition probe runs
  in float32, whatever the model's own dtypes); integer leaves keep theirs.
  """
  scaffold: dict = {}
  for leaf in fixture['leaves']:
    own = jnp.dtype(leaf['dtype'])
    floating = jnp.issubdtype(own, jnp.inexact)
    sds = jax.ShapeDtypeStruct(
      tuple(leaf['shape']), jnp.dtype(dtype) if dtype and floating else own
    )
    path = [tuple(p) for p in leaf['path']]
    _insert(scaffold, path, leaf.get('wrappers') or [], sds)
  return _materialize(scaffold)


# ----------------------------------------------------------------------------
# Block labels


def expected_labels(shape, spec: dict) -> np.ndarray:
  """One label per coordinate from an expected spec (see FIXTURES format)."""
  shape = tuple(shape)
  if spec.get('elementwise'):
    return np.arange(math.prod(shape)).reshape(shape)
  if 'parts' in spec:
    axis = spec['parts']['axis']
    pieces, offset = [], 0
    for size, part in spec['parts']['specs']:
      part_shape = shape[:axis] + (size,) + shape[axis + 1 :]
      labels = expected_labels(part_shape, part) + offset
      offset = labels.max() + 1 if labels.size else offset
      pieces.append(labels)
    if sum(p.shape[axis] for p in pieces) != shape[axis]:
      raise ValueError(f'parts do not add up to axis {axis} of {shape}')
    return np.concatenate(pieces, axis=axis)
  index = np.indices(shape, sparse=False)
  keys = [index[a] for a in spec['keep']]
  split = spec.get('split')
  if split:
    axis, heads = split['axis'], split['heads']
    if shape[axis] % heads:
      raise ValueError(f'{heads} heads do not divide axis {axis} of {shape}')
    keys.append(index[axis] // (shape[axis] // heads))
  if not keys:
    return np.zeros(shape, np.int64)
  sizes = [int(k.max()) + 1 for k in keys]
  return np.ravel_multi_index(keys, sizes)


def canonical(labels: np.ndarray) -> np.ndarray:
  """Labels renumbered by first occurrence, so equal partitions compare equal."""
  flat = np.asarray(labels).ravel()
  _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
  order = np.argsort(np.argsort(first))
  return order[inverse].reshape(np.shape(labels))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
  return np.shape(a) == np.shape(b) and np.array_equal(
    canonical(a), canonical(b)
  )


def key_path(jax_path) -> tuple[tuple[str, Any], ...]:
  """A jax key path in the fixtures' ``(key type, key)`` form."""
  out = []
  for key in jax_path:
    if isinstance(key, jax.tree_util.DictKey):
      out.append(('dict', key.key))
    elif isinstance(key, GetAttrKey):
      out.append(('attr', key.name))
    elif isinstance(key, jax.tree_util.SequenceKey):
      out.append(('seq', key.idx))
    else:
      out.append(('flat', key.key))
  return tuple(out)


def fixture_path(leaf: dict) -> tuple[tuple[str, Any], ...]:
  return tuple((kind, key) for kind, key in leaf['path'])


def plan_labels(plan) -> np.ndarray:
  """Block labels of a bound plan (``optax_adam_mini.block``), in NumPy.

  Coordinates share a label iff the plan averages them into one ``v``: the
  view's kept axes index the blocks (the head split is a reshape of one axis
  into ``(heads, head_dim)``); a fused leaf's parts are labelled apart.
  """
  if isinstance(plan, block_lib.ConcatPlan):
    pieces, offset = [], 0
    for part in plan.plans:
      labels = plan_labels(part) + offset
      offset = labels.max() + 1 if labels.size else offset
      pieces.append(labels)
    return np.concatenate(pieces, axis=plan.axis)
  size = math.prod(plan.shape)
  if plan.reduce_axes is None:
    return np.arange(size).reshape(plan.shape)
  index = np.indices(plan.view_shape)
  kept = [
    index[a] for a in range(len(plan.view_shape)) if a not in plan.reduce_axes
  ]
  if not kept:
    return np.zeros(plan.shape, np.int64)
  labels = np.ravel_multi_index(kept, [int(k.max()) + 1 for k in kept])
  return labels.reshape(plan.shape)


def state_labels(tree, **options) -> dict[tuple, np.ndarray]:
  """The block labels the state of ``scale_by_adam_mini(**options)`` holds.

  Read off the blocks ``init`` decided (``state.blocks``), bound to each
  leaf's shape; :func:`library_labels` checks on real updates that these
  labels are what the update does.
  """
  state = jax.eval_shape(scale_by_adam_mini(**options).init, tree)
  table = state.blocks
  with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    key_path(path): plan_labels(block_lib.bind(block, shape))
    for (path, _), block, shape in zip(with_path, table.blocks, table.shapes)
  }


def library_labels(tree, **options) -> dict[tuple, np.ndarray]:
  """The block labels ``scale_by_adam_mini(**options)`` gives each leaf, by path.

  Observed through the public API: ``v`` is set to a distinct value per
  stored entry, and one update with ``b1=0`` and a gradient whose square
  underflows leaves each coordinate's update at ``g / sqrt(v_b)``.
  """
  tx = scale_by_adam_mini(b1=0.0, b2=0.5, eps=0.0, **options)
  abstract = jax.eval_shape(tx.init, tree)
  offset = [1]

  def distinct(x):
    values = offset[0] + np.arange(math.prod(x.shape), dtype=np.float64)
    offset[0] += values.size
    return jnp.asarray(values.reshape(x.shape), x.dtype)

  state = abstract._replace(
    count=jnp.zeros(abstract.count.shape, abstract.count.dtype),
    mu=jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract.mu),
    v=jax.tree.map(distinct, abstract.v),
  )
  grads = jax.tree.map(lambda x: jnp.full(x.shape, _TINY_GRAD, x.dtype), tree)
  updates, _ = jax.jit(tx.update)(grads, state)
  with_path = jax.tree_util.tree_flatten_with_path(updates)[0]
  return {key_path(path): np.asarray(u) for path, u in with_path}
