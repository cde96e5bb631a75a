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

import dataclasses
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


@dataclasses.dataclass(frozen=True, eq=False)
class BlockTable:
  """Every leaf's block, decided once at ``init``: static, no arrays.

  The state carries it (a pytree node with no leaves, so it lives in the
  state's tree structure), and ``update`` applies it to the updates leaf by
  leaf instead of resolving the partition again. So the blocks are those the
  params gave at ``init``, with every wrapper and axis name they carried
  there, even where ``update`` receives bare arrays (NNX ``nnx.Optimizer``,
  MaxText's unboxed train state).

  Attributes:
    paths: each leaf's path, in ``jax.tree.leaves`` order.
    shapes: each leaf's shape.
    blocks: each leaf's :class:`Block`.
  """

  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  blocks: tuple[Block, ...]

  @classmethod
  def of(cls, leaves: list[LeafPartition]) -> BlockTable:
    return cls(
      tuple(path_str(x.path) for x in leaves),
      tuple(tuple(int(d) for d in x.leaf.shape) for x in leaves),
      tuple(x.block for x in leaves),
    )

  def plans(self, tree) -> tuple[list[Plan], Any]:
    """The blocks bound to ``tree``'s leaves (the updates), and its treedef.

    Raises:
      ValueError: if ``tree`` does not have the leaves the table was made for.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if len(leaves) != len(self.blocks):
      raise ValueError(
        f'The updates have {len(leaves)} leaves, but the optimizer state was '
        f'initialised for {len(self.blocks)}: init and update must see the '
        'same tree.'
      )
    plans = []
    for leaf, path, shape, block in zip(
      leaves, self.paths, self.shapes, self.blocks
    ):
      if tuple(leaf.shape) != shape:
        raise ValueError(
          f'The update for {path} has shape {tuple(leaf.shape)}, but the '
          f'state was initialised for shape {shape}.'
        )
      plans.append(bind(block, shape, path))
    return plans, treedef

  def __repr__(self) -> str:
    return f'BlockTable(<{len(self.blocks)} leaves>)'

  # A static node's equality decides pytree-structure matches, and jit
  # compares the state's structure at every call: so the common case (the
  # same table, carried from step to step) is an identity check, and the
  # hash is constant rather than a walk over every leaf's block.
  def __eq__(self, other) -> bool:
    if self is other:
      return True
    if not isinstance(other, BlockTable):
      return NotImplemented
    if not self.blocks or not other.blocks:
      # A table for no leaves agrees with any table: optax's
      # tree_map_params traces init on a params placeholder with no leaves
      # and matches the result against the real state.
      return True
    return (self.paths, self.shapes, self.blocks) == (
      other.paths,
      other.shapes,
      other.blocks,
    )

  def __hash__(self) -> int:
    return hash(BlockTable)


jax.tree_util.register_static(BlockTable)
