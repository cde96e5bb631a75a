"""Which leaf gets which block: resolving a partition against a pytree.

A partition is one of

* a single :class:`~optax_adam_mini.Block`, used for every leaf;
* a pytree of blocks that mirrors the params, or a prefix of them (a block at
  an inner node applies to every leaf below it);
* a label function ``params -> pytree of Block`` (for example
  :func:`~optax_adam_mini.default_partition`).

Blocks are matched to leaves by path, not by tree structure, so the same
partition resolves identically on the params that ``init`` sees and on the
updates that ``update`` sees, even where the two differ in wrappers: Flax NNX
passes ``Variable``s (paths ending in ``.value``) to ``init`` and bare arrays
to ``update``, and ``optax.masked`` replaces masked leaves by ``MaskedNode``.
Resolution runs once per trace; nothing here runs per step under ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from optax_adam_mini.block import Block, Plan, bind

Partition = Union[Block, Any, Callable[[Any], Any]]
"""A :class:`Block`, a pytree (or prefix) of blocks, or a label function."""

Path = tuple[str, ...]


class LeafPartition(NamedTuple):
  """One leaf and its resolved block."""

  path: Path
  leaf: Any
  block: Block
  plan: Plan


def path_names(key_path) -> Path:
  """A jax key path as plain strings, with NNX's trailing ``.value`` dropped.

  >>> from jax.tree_util import DictKey, GetAttrKey
  >>> path_names((DictKey('attn'), DictKey('query'), DictKey('kernel'),
  ...             GetAttrKey('value')))
  ('attn', 'query', 'kernel')
  """
  names = []
  for key in key_path:
    if isinstance(key, DictKey):
      names.append(str(key.key))
    elif isinstance(key, GetAttrKey):
      names.append(key.name)
    elif isinstance(key, SequenceKey):
      names.append(str(key.idx))
    elif isinstance(key, FlattenedIndexKey):
      names.append(str(key.key))
    else:
      names.append(str(key))
  if key_path and isinstance(key_path[-1], GetAttrKey) and names[-1] == 'value':
    names.pop()
  return tuple(names)


def path_str(path: Path) -> str:
  return '/'.join(path) if path else '<root>'


def leaves_with_paths(tree) -> tuple[list[tuple[Path, Any]], Any]:
  """The tree's array leaves with their normalised paths, and its treedef."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_names(kp), leaf) for kp, leaf in with_path], treedef


def resolve(partition: Partition, tree) -> tuple[list[LeafPartition], Any]:
  """Gives every leaf of ``tree`` its block and plan.

  Args:
    partition: a block, a pytree (or prefix) of blocks, or a label function.
    tree: the params or updates (arrays or ``jax.ShapeDtypeStruct``s).

  Returns:
    ``(leaves, treedef)``: one :class:`LeafPartition` per leaf of ``tree``, in
    ``jax.tree.leaves`` order, and the tree's treedef.

  Raises:
    ValueError: if a leaf has no block, or a block does not fit its leaf.
    TypeError: if the partition holds something other than blocks.
  """
  leaves, treedef = leaves_with_paths(tree)
  rules = partition(tree) if _is_label_function(partition) else partition
  if isinstance(rules, Block):
    lookup = lambda path: rules  # noqa: E731
  else:
    lookup = _prefix_lookup(rules)
  resolved = []
  for path, leaf in leaves:
    block = lookup(path)
    if block is None:
      raise ValueError(
        f'The partition has no block for leaf {path_str(path)} '
        f'(shape {tuple(leaf.shape)}): give a Block for every leaf, or for '
        'a node above it.'
      )
    plan = bind(block, leaf.shape, path_str(path))
    resolved.append(LeafPartition(path, leaf, block, plan))
  return resolved, treedef


def _is_label_function(partition) -> bool:
  return callable(partition) and not isinstance(partition, Block)


def _prefix_lookup(rules) -> Callable[[Path], Block | None]:
  """Maps a leaf path to the block at its longest matching prefix."""
  by_path: dict[Path, Block] = {}
  rule_leaves = jax.tree_util.tree_flatten_with_path(
    rules, is_leaf=lambda x: isinstance(x, Block)
  )[0]
  for key_path, rule in rule_leaves:
    path = path_names(key_path)
    if not isinstance(rule, Block):
      raise TypeError(
        f'The partition holds {rule!r} at {path_str(path)}; expected an '
        'optax_adam_mini.Block.'
      )
    by_path[path] = rule

  def lookup(path: Path) -> Block | None:
    for end in range(len(path), -1, -1):
      rule = by_path.get(path[:end])
      if rule is not None:
        return rule
    return None

  return lookup
