"""Turns a real library's parameter tree into the fixture records.

Used by the `build_<library>.py` modules, each in its own library's venv.
Imports only jax and the standard library at module level (pytest's
`--doctest-modules` imports every module under tests/), and nothing from
optax_adam_mini: the fixtures describe the libraries, not our code.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable
from typing import Any

import jax

# A wrapper describer looks at one pytree node and returns its wrapper record
# (type and metadata, FIXTURES.md) or None for a plain container.
Describe = Callable[[Any], 'dict | None']


def key_record(key: Any) -> list:
  """One path entry as FIXTURES.md spells it: [kind, key]."""
  tu = jax.tree_util
  if isinstance(key, tu.DictKey):
    return ['dict', _plain(key.key)]
  if isinstance(key, tu.GetAttrKey):
    return ['attr', key.name]
  if isinstance(key, tu.SequenceKey):
    return ['seq', key.idx]
  if isinstance(key, tu.FlattenedIndexKey):
    return ['flat', key.key]
  raise TypeError(f'unknown key type {type(key).__name__}: {key!r}')


def _plain(value: Any) -> Any:
  """A dict key as JSON can hold it (str/int stay, the rest by str)."""
  if isinstance(value, (str, int)) and not isinstance(value, bool):
    return value
  return str(value)


def type_name(node: Any) -> str:
  cls = type(node)
  return f'{cls.__module__}.{cls.__qualname__}'


def _children(node: Any) -> list[tuple[Any, Any]]:
  """The (key, child) pairs one level below `node`, [] for a leaf."""
  flat, _ = jax.tree_util.tree_flatten_with_path(
    node, is_leaf=lambda x: x is not node
  )
  if len(flat) == 1 and flat[0][0] == () and flat[0][1] is node:
    return []
  return [(path[0], child) for path, child in flat]


def leaf_records(
  tree: Any,
  describe: Describe,
  annotate: Callable[[list, list, Any], dict] | None = None,
) -> list[dict]:
  """Every array leaf of `tree` with its path, shape, dtype and wrappers.

  Walks the tree one pytree level at a time, so the path has exactly the keys
  `jax.tree_util.tree_flatten_with_path(tree)` gives, and each node that
  `describe` recognises as a metadata wrapper is recorded, outermost first.
  The types of the plain containers along the path go into
  annotations['containers'] so the harness can rebuild them too.
  """
  records = []

  def walk(node, path, wrappers, containers):
    kids = _children(node)
    if not kids:
      if not hasattr(node, 'shape'):
        return  # None or an empty container: no array here
      rec = {
        'path': path,
        'shape': [int(d) for d in node.shape],
        'dtype': str(node.dtype),
        'wrappers': wrappers,
        'annotations': {'containers': containers},
      }
      if annotate is not None:
        rec['annotations'].update(annotate(path, wrappers, node))
      records.append(rec)
      return
    info = describe(node)
    if info is None:
      containers = containers + [type_name(node)]
      wrappers_here = wrappers
    else:
      wrappers_here = wrappers + [info]
    for key, child in kids:
      walk(child, path + [key_record(key)], wrappers_here, containers)

  walk(tree, [], [], [])
  check = jax.tree_util.tree_flatten_with_path(tree)[0]
  if len(check) != len(records):
    raise AssertionError(f'{len(check)} leaves but {len(records)} records')
  for (path, _leaf), rec in zip(check, records):
    if [key_record(k) for k in path] != rec['path']:
      raise AssertionError(f'path mismatch at {rec["path"]}')
  return records


def versions(*distributions: str) -> dict[str, str]:
  out = {}
  for name in distributions:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'not installed'
  return out


def python_version() -> str:
  return platform.python_version()


def path_string(path: list) -> str:
  """'params/layer_0/attn/q_einsum/w' style, for messages and matching."""
  return '/'.join(str(k) for _, k in path)
