"""The built-in label function: transformer leaves mapped to Hessian blocks.

Adam-mini's blocks follow the near-block-diagonal Hessian of transformers
(Zhang et al., 2024, and the reference implementation v1.1.1): one ``v`` per
head for queries and keys, per output neuron for values, attention outputs
and MLPs, per token for embeddings and the LM head, per norm scale; biases
stay plain Adam. Stacked layers and experts each keep their own blocks.

Each leaf gets a :class:`~optax_adam_mini.layout.Layout` (its role and the
kind of each axis) and the block follows from it
(:func:`~optax_adam_mini.layout.block_for`). The layout comes from, in this
order:

1. ``layouts=``: what the user states, by path pattern;
2. the axis names the model gives its params (Flax logical names on Linen
   boxes, as MaxText annotates every param; NNX Variable sharding names;
   penzai and haliax named axes);
3. the layouts libraries fix by name (gemma's einsums; Equinox and PyTorch
   ports store linear ``weight`` as ``(out, in)``; Hugging Face GPT-2's
   ``Conv1D`` kernels, told apart from Flax ``(in, out)`` ones by shape);
4. Flax's convention (kernels ``(..., in, out)``, explicit-head attention
   ``(D, H, Dh)`` and ``(H, Dh, D)``) with extra axes as stacked layers, at
   the position the tree's stacked norm scales show (MaxText scans layers
   into axis 1).

Only what is unambiguous is decided: where a leaf's layout cannot be told
(a width equal to the layer count, say), a ``ValueError`` names the leaf and
the ``layouts=`` line that fixes it. A leaf of rank >= 2 whose role is unknown
in a tree that looks like a transformer gets one ``v`` per leaf (per layer)
and a warning (an error with ``strict=True``).
"""

from __future__ import annotations

import collections
import fnmatch
import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from optax_adam_mini import conventions as names_lib
from optax_adam_mini.annotations import LeafInfo, leaf_infos
from optax_adam_mini.block import Block
from optax_adam_mini.layout import BLOCK_RULES, Layout, Role, block_for
from optax_adam_mini.partition import Path, path_str

__all__ = [
  'Decision',
  'Role',
  'classify',
  'default_partition',
  'default_weight_decay_mask',
  'describe',
  'label_function',
]


# ----------------------------------------------------------------------------
# Roles from names


def _is_norm(name: str) -> bool:
  return (
    'norm' in name or name in ('ln', 'ln1', 'ln2') or name.startswith('ln_')
  )


def _is_attention(name: str) -> bool:
  return 'attn' in name or 'attention' in name


def _is_mlp(name: str) -> bool:
  return name in names_lib.MLP_CONTAINERS or 'moe' in name or 'mlp' in name


def classify(path: Sequence[str]) -> Role:
  """The role of the leaf at ``path`` (names as in ``partition.path_names``).

  >>> classify(('model', 'layers', '0', 'self_attn', 'q_proj', 'kernel'))
  <Role.QUERY: 'query'>
  >>> classify(('h', '0', 'ln_1', 'scale'))
  <Role.NORM: 'norm'>
  >>> classify(('decoder', 'layers', 'mlp', 'wo', 'kernel'))
  <Role.MLP: 'mlp'>
  """
  names = [str(name).lower() for name in path]
  if not names:
    return Role.OTHER
  leaf = names[-1]
  ancestors = names[:-1]
  in_attention = any(_is_attention(name) for name in ancestors)
  in_mlp = any(_is_mlp(name) for name in ancestors)
  if 'bias' in leaf or leaf in names_lib.BIAS:
    return Role.BIAS
  # The leaf's own name and its module's, past layer types (penzai's
  # 'pre_attention_norm/scale.weights', MaxText's 'decoder_norm/scale').
  named = [n for n in names if n not in names_lib.GENERIC] or names
  if _is_norm(named[-1]) or (len(named) > 1 and _is_norm(named[-2])):
    return Role.NORM
  # Params stored directly under their module (gemma's mlp/gating_einsum,
  # MaxText's MoeBlock_0/wi_0) are named by their leaf.
  own = _own_name(names)
  stem = own.rstrip('0123456789_') or own
  if leaf in names_lib.EMBEDDING_LEAVES or own in names_lib.EMBEDDING:
    return Role.EMBEDDING
  if own in names_lib.PER_LAYER_EMBEDDING:
    return Role.EMBEDDING
  if stem.endswith('scale') and own not in names_lib.LIBRARY_LAYOUTS:
    return Role.NORM  # a learned channel scale, like a norm's
  if stem in names_lib.DENSE or any(
    part in n for n in ancestors for part in names_lib.DENSE_CONTAINERS
  ):
    return Role.DENSE
  if own in names_lib.OUTPUT:
    if in_attention:
      return Role.ATTENTION_OUT
    return Role.MLP if in_mlp else Role.OUTPUT
  if own in names_lib.ROUTER and in_mlp:
    return Role.ROUTER
  if own in names_lib.MLA_KV_DOWN or own in names_lib.MLA_KV_UP:
    return Role.FUSED_QKV
  if own in names_lib.FUSED_QKV:
    return Role.FUSED_QKV
  if own in names_lib.QUERY:
    return Role.QUERY
  if own in names_lib.KEY:
    return Role.KEY
  if own in names_lib.VALUE:
    return Role.VALUE
  if own in names_lib.LATENT:
    return Role.DENSE
  if in_mlp and (own in names_lib.MLP_PROJ or not in_attention):
    return Role.MLP
  if own in names_lib.ATTENTION_OUT or (own == 'c_proj' and in_attention):
    return Role.ATTENTION_OUT
  if own in names_lib.MLP_PROJ and own not in ('linear', 'wo'):
    return Role.MLP
  if leaf in names_lib.GENERIC:
    return Role.DENSE
  return Role.OTHER


def default_weight_decay_mask(params):
  """``True`` for every leaf except norm scales and biases.

  This is the reference implementation's rule (it skips names containing
  ``norm``, ``ln`` or ``bias``), decided by :func:`classify` on each leaf's
  path as :mod:`~optax_adam_mini.annotations` reads it.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  infos = leaf_infos(params)
  decays = [classify(info.path) not in (Role.NORM, Role.BIAS) for info in infos]
  del leaves
  return jax.tree_util.tree_unflatten(treedef, decays)


# ----------------------------------------------------------------------------
# What the whole tree says: width, stacking axis, head counts


def _pattern_for(path: Path) -> str:
  return '/'.join(path[-2:]) if len(path) >= 2 else path_str(path)


class _Tree:
  """Facts about the whole tree that single leaves do not show."""

  def __init__(self, infos: list[LeafInfo], roles: list[Role]):
    self.infos, self.roles = infos, roles
    self.width = _model_width(infos, roles)
    self.layer_axis = _layer_axis(infos, roles, self.width)
    self.conv1d_out_in = _conv1d_out_in(infos, self.width)
    self.heads = None  # set by describe, for the MLA sizes
    self.num_layers = _num_layers(infos)
    # Norm scales of rank 2 with a width axis: the layers are stacked.
    self.stacked_norms = self.width is not None and any(
      role is Role.NORM and len(info.shape) == 2 and self.width in info.shape
      for info, role in zip(infos, roles)
    )

  def mla_sizes(self, path: Path) -> tuple[int, int, int, int] | None:
    """``(latent, rope, key, value)`` per head of the MLA block at ``path``.

    Read off the block's other leaves: the latent size is the kv norm's, the
    kv down-projection's outputs are latent + rope, the query heads are key
    + rope, the kv up-projection's heads key + value.
    """
    block = _mla_block(path)
    found = {}
    for info, role in zip(self.infos, self.roles):
      if role is Role.BIAS or _mla_block(info.path) != block:
        continue
      kinds = _plain_kinds(info, role, self)
      if kinds is None:
        continue
      names = {str(n).lower() for n in info.path}
      for group in ('MLA_KV_NORM', 'MLA_KV_DOWN', 'MLA_KV_UP', 'MLA_QUERY'):
        if names & getattr(names_lib, group):
          found[group] = (info, kinds)
    if len(found) < 4:
      return None

    def size(group, *of_kinds):
      info, kinds = found[group]
      return math.prod(d for d, k in zip(info.shape, kinds) if k in of_kinds)

    latent = size('MLA_KV_NORM', 'out')
    rope = size('MLA_KV_DOWN', 'out', 'parts') - latent
    q_info, q_kinds = found['MLA_QUERY']
    up_info, up_kinds = found['MLA_KV_UP']
    num_heads = self.heads.num_heads if self.heads else None
    if 'head_dim' in q_kinds:
      query = size('MLA_QUERY', 'head_dim')
    elif num_heads:
      query = size('MLA_QUERY', 'out') // num_heads
    else:
      return None
    if 'head_dim' in up_kinds:
      per_head = size('MLA_KV_UP', 'head_dim')
    elif num_heads:
      per_head = size('MLA_KV_UP', 'out', 'parts') // num_heads
    else:
      return None
    nope = query - rope
    value = per_head - nope
    if min(latent, rope, nope, value) <= 0:
      return None
    return latent, rope, nope, value


_MLA_NAMES = (
  names_lib.MLA_KV_NORM
  | names_lib.MLA_KV_DOWN
  | names_lib.MLA_KV_UP
  | names_lib.MLA_QUERY
)


def _mla_block(path: Path) -> Path | None:
  """The attention block of an MLA leaf: its path above the MLA name."""
  for end in range(len(path) - 1, -1, -1):
    if str(path[end]).lower() in _MLA_NAMES:
      return path[:end]
  return None


def _num_layers(infos) -> int | None:
  """How many layers the tree has: numbered ``layers_<n>``/``layers/<n>``."""
  numbers = set()
  for info in infos:
    for i, name in enumerate(info.path):
      name = str(name).lower()
      stem, _, number = name.rpartition('_')
      if (
        stem in ('layers', 'layer', 'blocks', 'block', 'h') and number.isdigit()
      ):
        numbers.add(int(number))
      elif (
        name.isdigit()
        and i
        and str(info.path[i - 1]).lower()
        in (
          'layers',
          'h',
          'blocks',
        )
      ):
        numbers.add(int(name))
  return max(numbers) + 1 if numbers else None


def _model_width(infos, roles) -> int | None:
  """The model width D: an embedding table's row size, or the norms'."""
  for info, role in zip(infos, roles):
    if role is Role.EMBEDDING and len(info.shape) == 2:
      return info.shape[-1]
  sizes = collections.Counter(
    info.shape[0]
    for info, role in zip(infos, roles)
    if role is Role.NORM and len(info.shape) == 1
  )
  return sizes.most_common(1)[0][0] if sizes else None


def _layer_axis(infos, roles, width) -> int | None:
  """Where stacked layers sit: the non-width axis of stacked norm scales.

  MaxText scans layers into axis 1 (``param_scan_axis``), so its norm scales
  are ``(D, L)``; ``nn.scan`` and ``nnx.scan`` stack them first, ``(L, D)``.
  With no stacked norm the layers lead (the common case); ``None`` where the
  norms cannot tell (their two sizes are both the width) or disagree.
  """
  votes, square = set(), False
  for info, role in zip(infos, roles):
    if role is Role.NORM and len(info.shape) == 2 and width is not None:
      first, second = info.shape
      if second == width and first != width:
        votes.add(0)
      elif first == width and second != width:
        votes.add(1)
      elif first == second == width:
        square = True
  if len(votes) > 1 or (square and not votes):
    return None
  return next(iter(votes), 0)


def _conv1d_out_in(infos, width) -> bool:
  """Whether GPT-2 ``Conv1D`` kernels are stored ``(out, in)`` (HF Flax).

  Told from the MLP kernels, whose fan-in and fan-out differ: ``c_fc`` maps
  the width D to 4D, ``mlp/c_proj`` back.
  """
  if width is None:
    return False
  votes = set()
  for info in infos:
    if len(info.path) < 2 or len(info.shape) != 2 or info.path[-1] != 'kernel':
      continue
    module, (first, second) = info.path[-2], info.shape
    if first == second or 'mlp' not in info.path:
      continue
    if module == 'c_fc':
      votes.add(second == width)
    elif module == 'c_proj':
      votes.add(first == width)
  return votes == {True}


class _Heads:
  """Head sizes from the user's counts, for axes whose heads are flattened."""

  def __init__(self, num_heads, num_kv_heads, head_dim, infos, roles, tree):
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads
    self.fixed_dim = head_dim
    self.where = ''
    # With only num_heads given, a key takes its head size from the queries.
    self.query_head_dim = None
    if head_dim is None and num_heads is not None:
      dims = set()
      for info, role in zip(infos, roles):
        if role is Role.QUERY and _flat_heads_axis(info, role, tree):
          size = info.shape[-1]
          if size % num_heads == 0:
            dims.add(size // num_heads)
      if len(dims) == 1:
        self.query_head_dim = dims.pop()

  def head_dim(self, role: Role, size: int) -> int:
    where = f'{self.where} ({role.value}, {size} outputs)'
    count, name = (
      (self.num_heads, 'num_heads')
      if role is Role.QUERY
      else (self.num_kv_heads, 'num_kv_heads')
    )
    if self.fixed_dim is not None:
      dim, source = self.fixed_dim, f'head_dim={self.fixed_dim}'
    elif count is not None:
      if size % count:
        raise ValueError(
          f'{where}: {name}={count} does not divide the {size} outputs.'
        )
      dim, source = size // count, f'{name}={count}'
    elif role is Role.KEY and self.query_head_dim is not None:
      dim = self.query_head_dim
      source = f'the queries (num_heads={self.num_heads})'
    elif role is Role.KEY and self.num_heads is not None:
      if size % self.num_heads:
        raise ValueError(
          f'{where}: num_heads={self.num_heads} does not divide the {size} '
          'outputs; pass num_kv_heads= or head_dim=.'
        )
      dim, source = size // self.num_heads, f'num_heads={self.num_heads}'
    else:
      raise ValueError(
        f'{where}: this attention leaf has its heads flattened into one '
        'axis and the head count cannot be derived from its shape. Pass '
        'num_heads= (and num_kv_heads= for grouped-query attention) or '
        'head_dim= to adam_mini, or give a partition of your own.'
      )
    if dim <= 0 or size % dim:
      raise ValueError(
        f'{where}: heads of {dim} coordinates (from {source}) do not divide '
        f'the {size} outputs; check num_heads, num_kv_heads and head_dim.'
      )
    if self.fixed_dim is not None and count is not None:
      if count * self.fixed_dim != size:
        raise ValueError(
          f'{where}: {name}={count} heads of head_dim={self.fixed_dim} do '
          f'not make its {size} outputs.'
        )
    return dim

  def _fused_counts(self, width: int):
    if self.num_heads is None and self.fixed_dim is None:
      raise ValueError(
        f'{self.where}: pass num_heads= (or head_dim=) so the query and key '
        'parts of this fused projection can be split into heads.'
      )
    dim = self.fixed_dim or width // self.num_heads
    num_q = self.num_heads or width // dim
    return dim, num_q, self.num_kv_heads or num_q

  def qkv_parts(self, size: int, width: int) -> tuple[tuple[Role, int], ...]:
    dim, num_q, num_kv = self._fused_counts(width)
    if dim * (num_q + 2 * num_kv) == size:
      return (
        (Role.QUERY, num_q * dim),
        (Role.KEY, num_kv * dim),
        (Role.VALUE, num_kv * dim),
      )
    if dim * 2 * num_kv == size:  # k|v of cross-attention (GPT-2's c_attn)
      return ((Role.KEY, num_kv * dim), (Role.VALUE, num_kv * dim))
    raise ValueError(
      f'{self.where} (fused q/k/v of {size} outputs): {num_q} query and '
      f'{num_kv} key/value heads of {dim} make neither q|k|v nor k|v. If '
      'the counts are right, its layout is another one: state it with '
      "layouts={'<path>': Block...} or give a partition."
    )

  def qkv_head_parts(self, size: int) -> tuple[tuple[Role, int], ...]:
    """The q|k|v heads stacked along one heads axis of ``size``."""
    num_q = self.num_heads
    num_kv = self.num_kv_heads or num_q
    if num_q is not None and num_q + 2 * num_kv == size:
      return ((Role.QUERY, num_q), (Role.KEY, num_kv), (Role.VALUE, num_kv))
    raise ValueError(
      f'{self.where}: a fused q/k/v leaf with {size} heads along one axis; '
      f'pass num_heads= and num_kv_heads= (now {num_q} and {num_kv}) so its '
      'query, key and value heads can be told apart.'
    )

  def interleaved_qkv(self, size: int, width: int) -> tuple[int, int]:
    """``(heads, head_dim)`` of a q|k|v axis laid out per head."""
    dim, num_q, num_kv = self._fused_counts(width)
    if num_kv != num_q or 3 * num_q * dim != size:
      raise ValueError(
        f'{self.where} (q|k|v interleaved per head, {size} outputs): '
        f'{num_q} query and {num_kv} key/value heads of {dim} do not make '
        "(heads, 3, head_dim). State its blocks with layouts={'<path>': "
        'Block...} or give a partition.'
      )
    return num_q, dim


def _interleaved_qkv_block(
  info: LeafInfo,
  kinds: list[str],
  heads: _Heads,
  value_blocks: str,
  block_rules: str,
) -> Block:
  """Bloom's and GPT-NeoX's ``query_key_value``: ``(H, 3, Dh)`` flattened.

  Each head's query, key and value slice is one head's coordinates, blocked
  by its role's rule: under the reference's, one ``v`` per query and key
  slice and one per output neuron of the value slice (or one, with
  ``value_blocks='whole'``).
  """
  axis = kinds.index('parts')
  width = info.shape[kinds.index('in')]
  num_heads, dim = heads.interleaved_qkv(info.shape[axis], width)
  slice_kinds = tuple(
    'head_dim' if a == axis else k for a, k in enumerate(kinds)
  )
  slice_shape = info.shape[:axis] + (dim,) + info.shape[axis + 1 :]
  rules = [
    block_for(
      Layout(role, slice_kinds), slice_shape, None, value_blocks, block_rules
    )
    for role in (Role.QUERY, Role.KEY, Role.VALUE)
  ]
  return Block.concat(axis, [(dim, rule) for rule in rules] * num_heads)


# ----------------------------------------------------------------------------
# A leaf's layout


def _flat_heads_axis(info: LeafInfo, role: Role, tree: _Tree) -> bool:
  """Whether a query/key leaf (no axis names) has its heads flattened."""
  return len(info.shape) >= 2 and not _explicit_heads(info, role, tree)


def _explicit_heads(info: LeafInfo, role: Role, tree: _Tree, counts=()):
  """Whether an attention kernel carries heads as an axis of its own.

  Flax's ``MultiHeadDotProductAttention``/NNX ``MultiHeadAttention``,
  MaxText, tunix and bonsai store queries, keys and values as ``(D, H, Dh)``
  and the output as ``(H, Dh, D)``; Llama-style ports store ``(D, H * Dh)``
  (and ``(L, D, H * Dh)`` stacked). For rank 3 the model width tells which,
  else the head counts; rank 4 and more (stacked, explicit) only the Flax
  attention names (``query``, ``key``, ``value``, ``out``) are read as
  explicit.
  """
  shape, path = info.shape, info.path
  if len(shape) < 3:
    return False
  if len(shape) >= 4:
    return len(path) >= 2 and path[-2].lower() in (
      'query',
      'key',
      'value',
      'out',
    )
  width = tree.width
  counts = {c for c in counts if c is not None}
  head_count = shape[0] if role is Role.ATTENTION_OUT else shape[1]
  if counts and head_count not in counts:
    return False  # no axis of the user's head count: not explicit heads
  if role is Role.ATTENTION_OUT:
    in_or_out, other = shape[-1], shape[0]
    if width is not None and shape[1] == shape[2] == width:
      # (L, H * Dh, D) with H * Dh = D, the usual stacked output, or heads as
      # wide as the model (H, D, D): explicit only if the head count says so
      # and the tree's norms are not stacked (its explicit heads would then
      # be stacked too, rank 4).
      return bool(counts) and not tree.stacked_norms
  else:
    in_or_out, other = shape[0], shape[1]
  if width is not None:
    if in_or_out == width and other != width:
      return True
    if other == width and in_or_out != width:
      return False
  if counts:
    return True
  # No width, no counts: the Flax names are explicit (their documented
  # layout); other names are Llama-style stacks.
  return len(path) >= 2 and path[-2].lower() in ('query', 'key', 'value', 'out')


def _user_layout(path: Path, layouts) -> Layout | Block | None:
  text = path_str(path)
  for pattern, layout in layouts:
    if fnmatch.fnmatchcase(text, pattern) or fnmatch.fnmatchcase(
      text, '*/' + pattern
    ):
      return layout
  return None


def _remedy(info: LeafInfo, role: Role, kinds: str) -> str:
  """The ``layouts=`` line that states this leaf's layout."""
  return (
    f"adam_mini(..., layouts={{'{_pattern_for(info.path)}': "
    f"'{role.value}: {kinds}'}}) (one kind per axis: layers heads head_dim "
    'in out vocab parts)'
  )


def _base_kinds(info: LeafInfo, role: Role, tree: _Tree, heads) -> list[str]:
  """The kinds of a leaf's own axes by convention (no axis names)."""
  shape, path = info.shape, info.path
  leaf = path[-1].lower() if path else ''
  module = path[-2].lower() if len(path) > 1 else ''
  own = _own_name(path)
  if own in names_lib.LIBRARY_LAYOUTS and len(shape) >= len(
    names_lib.LIBRARY_LAYOUTS[own].split()
  ):
    kinds = names_lib.LIBRARY_LAYOUTS[own].split()
    if '?' in kinds:
      kinds = _by_width(info, role, kinds, tree)
    return kinds
  if role in (Role.NORM, Role.OTHER):
    return ['out']
  if role is Role.EMBEDDING:
    return ['vocab', 'out']
  counts = (heads.num_heads,) if role is Role.QUERY else (heads.num_kv_heads,)
  if role in (Role.QUERY, Role.KEY, Role.VALUE) and _explicit_heads(
    info, role, tree, counts
  ):
    return ['in', 'heads', 'head_dim']
  if role is Role.ATTENTION_OUT and _explicit_heads(
    info, role, tree, (heads.num_heads,)
  ):
    return ['heads', 'head_dim', 'out']
  out_in = leaf == 'weight' or (
    tree.conv1d_out_in and module in ('c_attn', 'c_fc', 'c_proj', 'q_attn')
  )
  if role is Role.FUSED_QKV:
    kinds = ['parts', 'in'] if out_in else ['in', 'parts']
    if not out_in and tree.width is not None and len(shape) >= 2:
      # c_attn may be stored either way round: the fused axis is not D.
      if shape[-1] == tree.width and shape[-2] != tree.width:
        kinds = ['parts', 'in']
    return kinds
  if role is Role.OUTPUT:
    return ['vocab', 'in'] if out_in else ['in', 'vocab']
  return ['out', 'in'] if out_in else ['in', 'out']


def _by_width(info, role, kinds, tree):
  """Fills a ``? ?`` pair (in/out order varies by release) from the width."""
  first = kinds.index('?')
  shape = info.shape[len(info.shape) - len(kinds) :]
  a, b = shape[first], shape[first + 1]
  width = tree.width
  if width is not None and a == width and b != width:
    pair = ['in', 'out']
  elif width is not None and b == width and a != width:
    pair = ['out', 'in']
  else:
    raise ValueError(
      f'{path_str(info.path)} (shape {info.shape}): cannot tell its input '
      f'axis from its output axis (sizes {a} and {b}, model width {width}). '
      f'State it: {_remedy(info, role, " ".join(kinds).replace("? ?", "in out"))}.'
    )
  return kinds[:first] + pair + kinds[first + 2 :]


def _stacked(info: LeafInfo, role: Role, base: list[str], tree: _Tree):
  """The leaf's kinds with its extra (stacked) axes marked ``layers``."""
  extra = len(info.shape) - len(base)
  if extra < 0:
    return None  # lower rank than its role: not a leaf of that kind
  kinds = ['layers'] * extra + base
  if not extra:
    return kinds
  if tree.layer_axis is None:
    guess = ' '.join(kinds)
    raise ValueError(
      f'{path_str(info.path)} (shape {info.shape}): cannot tell which axis '
      'holds its stacked layers: the stacked norm scales do not show it '
      '(both their sizes are the model width, or they disagree). State it, '
      f'for example {_remedy(info, role, guess)}, or give the params their '
      'Flax axis names (nn.with_logical_partitioning).'
    )
  if 0 < tree.layer_axis < len(info.shape):
    # Layers scanned into that axis (MaxText, nested scans side by side);
    # the experts of an MoE weight lead.
    experts = (
      1 if extra > 1 and any(_is_mlp(n.lower()) for n in info.path) else 0
    )
    kinds = ['layers'] * experts + base
    for _ in range(extra - experts):
      kinds.insert(tree.layer_axis, 'layers')
  return kinds


def _kinds_from_names(info: LeafInfo, role: Role) -> list[str] | None:
  """Kinds from axis names, or ``None`` if the names are not logical ones."""
  raw = info.axis_names
  if raw is None or len(raw) != len(info.shape):
    return None
  kinds = []
  for name in raw:
    if name is None:
      kinds.append(None)
      continue
    key = name.lower() if isinstance(name, str) else None
    if key not in names_lib.AXIS_NAMES:
      return None  # mesh axis names, or a library we do not know
    kind = names_lib.AXIS_NAMES[key]
    if role is Role.ROUTER and key in names_lib.EXPERT_AXES:
      kind = 'out'  # a router's outputs are its experts' logits
    elif kind in ('heads', 'head_dim') and role not in _ATTENTION_ROLES:
      kind = None  # outside attention a head axis is just a feature axis
    kinds.append(kind)
  if all(kind is None for kind in kinds):
    return None
  if kinds.count('heads') == 1 and 'head_dim' not in kinds:
    # A heads axis with no head_dim axis beside it holds heads * head_dim
    # flattened (('embed', 'heads') on a (D, H * Dh) kernel): for a query or
    # key it is split into heads; for the others it is a feature axis.
    flat = {Role.QUERY: 'out', Role.KEY: 'out', Role.VALUE: 'out'}
    flat[Role.ATTENTION_OUT] = 'in'
    kinds[kinds.index('heads')] = flat.get(role)
  return _features_by_role(kinds, role, _mlp_fan_out(info, kinds))


def _mlp_fan_out(info: LeafInfo, kinds) -> int | None:
  """The fan-out axis of an MLP kernel named by its axes, or ``None``.

  Haliax and penzai name axes but do not order them (in, out): an up
  projection maps the width (``embed``) to the hidden (``mlp``) axis, a down
  projection (``down_proj``, ``wo``, ...) back.
  """
  if info.names_source not in ('penzai', 'haliax'):
    return None  # Flax orders its kernels (in, out)
  raw = [str(n).lower() if n is not None else None for n in info.axis_names]
  width = [a for a, n in enumerate(raw) if n in names_lib.WIDTH_AXES]
  hidden = [a for a, n in enumerate(raw) if n in names_lib.HIDDEN_AXES]
  if len(width) != 1 or len(hidden) != 1 or kinds[width[0]] is not None:
    return None
  module = _own_name(info.path)
  return width[0] if module in names_lib.DOWN_PROJ else hidden[0]


def _own_name(path: Path) -> str:
  """The name that says what a leaf is: the last segment that is not a
  layer type (``kernel``, ``w``, ``weight``, penzai's ``Linear``, ...)."""
  for name in reversed(path):
    if str(name).lower() not in names_lib.GENERIC:
      return str(name).lower()
  return str(path[-1]).lower() if path else ''


def _features_by_role(kinds, role, fan_out=None) -> list[str] | None:
  """Turns feature axes (``None``) into ``in``/``out`` by the leaf's role."""
  features = [a for a, kind in enumerate(kinds) if kind is None]
  if fan_out is not None and role in (Role.MLP, Role.DENSE, Role.ROUTER):
    return [
      ('out' if a == fan_out else 'in') if kind is None else kind
      for a, kind in enumerate(kinds)
    ]
  has_heads = 'heads' in kinds or 'head_dim' in kinds
  if role in (Role.QUERY, Role.KEY, Role.VALUE, Role.FUSED_QKV) and has_heads:
    fill = {a: 'in' for a in features}
  elif role is Role.ATTENTION_OUT and has_heads:
    fill = {a: 'out' for a in features}
  elif role in (Role.NORM, Role.OTHER, Role.EMBEDDING, Role.BIAS):
    fill = {a: 'out' for a in features}
  elif role is Role.OUTPUT and 'vocab' in kinds:
    fill = {a: 'in' for a in features}
  elif 'out' in kinds:
    fill = {a: 'in' for a in features}
  else:
    # Flax's convention: the last feature axis is the fan-out.
    fill = {a: 'in' for a in features[:-1]}
    if features:
      fill[features[-1]] = 'out'
  return [fill.get(a, kind) for a, kind in enumerate(kinds)]


def _layout(info, role, tree, heads, layouts) -> tuple[Layout | Block, str]:
  """The leaf's layout (or the user's Block) and where it came from."""
  user = _user_layout(info.path, layouts)
  if user is not None:
    return user, 'layouts='
  if role is Role.BIAS:
    return Layout(role, ('out',) * len(info.shape)), 'name'
  if _own_name(info.path) in names_lib.PER_COORDINATE or not _is_float(info):
    # Learned scalars; and integer leaves (MaxText's token -> expert table),
    # which no gradient trains: nothing to share.
    return Block.elementwise(), 'name'
  if (
    _own_name(info.path) in names_lib.PER_LAYER_EMBEDDING
    and len(info.shape) == 2
  ):
    return _per_layer_embedding(info, tree), 'name'
  kinds = _kinds_from_names(info, role)
  source = f'axis names ({info.names_source})'
  if kinds is None:
    kinds = _plain_kinds(info, role, tree)
    source = 'names and shape'
    if kinds is None:
      return Layout(Role.OTHER, ('out',) * len(info.shape)), 'rank'
  own = _own_name(info.path)
  if role is Role.FUSED_QKV and (
    own in names_lib.MLA_KV_DOWN or own in names_lib.MLA_KV_UP
  ):
    return _mla_layout(info, kinds, tree), source
  if role is Role.FUSED_QKV and 'parts' not in kinds:
    return _fused_without_parts_axis(info, kinds, tree, heads), source
  return Layout(role, tuple(kinds)), source


def _is_float(info: LeafInfo) -> bool:
  if info.dtype is None:
    return True
  try:
    return bool(np.issubdtype(np.dtype(info.dtype), np.inexact))
  except TypeError:
    return True


def _per_layer_embedding(info: LeafInfo, tree: _Tree) -> Block:
  """One table per layer flattened into the feature axis: per token and layer."""
  layers, size = tree.num_layers, info.shape[1]
  if not layers or size % layers:
    raise ValueError(
      f'{path_str(info.path)} (shape {info.shape}): one embedding table per '
      f'layer flattened into {size} features, but the tree shows '
      f'{layers or "no"} layers that divide them. State its blocks, e.g. '
      f"layouts={{'{_pattern_for(info.path)}': Block.heads(1, <features per "
      'layer>, along=[0])}.'
    )
  return Block.heads(1, size // layers, along=(0,))


def _plain_kinds(info: LeafInfo, role: Role, tree: _Tree):
  """A leaf's kinds from its axis names, else from its names and shape."""
  kinds = _kinds_from_names(info, role)
  if kinds is None:
    kinds = _stacked(
      info, role, _base_kinds(info, role, tree, tree.heads), tree
    )
  return kinds


def _fused_without_parts_axis(info, kinds, tree, heads) -> Layout:
  """Fused leaves whose parts share an axis with something else.

  MLA's kv projections (sizes from the attention block's other leaves), and
  q|k|v heads along one heads axis (MaxText's fused_qkv under GQA).
  """
  if kinds.count('heads') == 1:
    axis = kinds.index('heads')
    parts = heads.qkv_head_parts(info.shape[axis])
    kinds = list(kinds)
    kinds[axis] = 'parts'
    return Layout(Role.FUSED_QKV, tuple(kinds), parts=parts, part_kind='heads')
  if kinds.count('out') == 1:  # a flattened q|k|v axis
    kinds = list(kinds)
    kinds[kinds.index('out')] = 'parts'
    return Layout(Role.FUSED_QKV, tuple(kinds))
  raise ValueError(
    f'{path_str(info.path)} (shape {info.shape}): a fused projection whose '
    f'parts axis cannot be told (axes {" ".join(map(str, kinds))}). State '
    f'it: {_remedy(info, Role.FUSED_QKV, "in parts heads head_dim")}.'
  )


def _mla_layout(info: LeafInfo, kinds, tree: _Tree) -> Layout:
  """DeepSeek's multi-head latent attention kv projections.

  The down-projection ``wkv_a`` (``kv_a_proj_with_mqa``) maps the width to
  ``[kv latent | rope key]``: the latent neurons feed every head through the
  up-projection, so one ``v`` per output neuron, as for a value; the rope key
  is one key head shared by all heads, so one ``v``. The up-projection
  ``wkv_b`` gives each head ``[key (no rope) | value]``: one ``v`` per head
  for the key part, per output neuron for the value part. The sizes come
  from the block's other leaves: the latent from ``kv_norm``, the rope size
  from ``wkv_a``, the query head size from ``wq_b`` (or ``query``).
  """
  sizes = tree.mla_sizes(info.path)
  if sizes is None:
    raise ValueError(
      f'{path_str(info.path)} (shape {info.shape}): an MLA kv projection, but '
      'its attention block has no kv_norm/wkv_a/wq_b leaves to size its '
      "parts from. State its blocks with layouts={'<path>': Block...}."
    )
  latent, rope, nope, value = sizes
  kinds = ['out' if k == 'parts' else k for k in kinds]
  own = _own_name(info.path)
  if own in names_lib.MLA_KV_DOWN:
    kinds[kinds.index('out')] = 'parts'
    return Layout(
      Role.FUSED_QKV,
      tuple(kinds),
      parts=((Role.DENSE, latent, 'out'), (Role.KEY, rope, 'head_dim')),
    )
  if 'heads' in kinds:  # (latent, H, nope + v)
    kinds[kinds.index('head_dim')] = 'parts'
    parts = ((Role.KEY, nope, 'head_dim'), (Role.VALUE, value, 'head_dim'))
  else:  # (latent, H * (nope + v)), flattened per head
    axis = kinds.index('out')
    kinds[axis] = 'parts'
    per_head = nope + value
    if info.shape[axis] % per_head:
      raise ValueError(
        f'{path_str(info.path)} (shape {info.shape}): heads of {nope} key '
        f'and {value} value coordinates do not divide its {info.shape[axis]} '
        'outputs.'
      )
    parts = (
      (Role.KEY, nope, 'head_dim'),
      (Role.VALUE, value, 'head_dim'),
    ) * (info.shape[axis] // per_head)
  return Layout(Role.FUSED_QKV, tuple(kinds), parts=parts)


# ----------------------------------------------------------------------------
# The label function


class Decision(NamedTuple):
  """What the default partition decided for one leaf.

  Attributes:
    path: the leaf's path as the partition reads it.
    shape: the leaf's shape.
    role: its :class:`Role`.
    layout: its :class:`Layout` (``None`` where ``layouts=`` gave a Block).
    block: its :class:`Block`.
    source: where the layout came from: ``'layouts='``, ``'axis names
      (<source>)'`` or ``'names and shape'``.
  """

  path: Path
  shape: tuple[int, ...]
  role: Role
  layout: Layout | None
  block: Block
  source: str


def _check_options(
  num_heads, num_kv_heads, head_dim, value_blocks, strict, block_rules
):
  if value_blocks not in ('neuron', 'whole'):
    raise ValueError(
      f"value_blocks must be 'neuron' or 'whole', got {value_blocks!r}."
    )
  if block_rules not in BLOCK_RULES:
    raise ValueError(
      f'block_rules must be one of {sorted(BLOCK_RULES)}, got {block_rules!r}.'
    )
  for name, count in (
    ('num_heads', num_heads),
    ('num_kv_heads', num_kv_heads),
    ('head_dim', head_dim),
  ):
    if count is not None and (
      not isinstance(count, int) or isinstance(count, bool) or count <= 0
    ):
      raise ValueError(f'{name} must be a positive int, got {count!r}.')
  if not isinstance(strict, bool):
    raise TypeError(f'strict must be a bool, got {strict!r}.')


def _check_layouts(layouts) -> tuple[tuple[str, Layout | Block], ...]:
  if layouts is None:
    return ()
  if not isinstance(layouts, Mapping):
    raise TypeError(
      'layouts must map path patterns to layouts, e.g. '
      f"{{'attn/q_einsum/w': 'query: heads in head_dim'}}; got {layouts!r}."
    )
  checked = []
  for pattern, layout in layouts.items():
    if not isinstance(pattern, str):
      raise TypeError(f'layouts: patterns must be strings, got {pattern!r}.')
    if isinstance(layout, str):
      layout = Layout.parse(layout)
    if not isinstance(layout, (Layout, Block)):
      raise TypeError(
        f'layouts[{pattern!r}] must be a layout string, a Layout or a Block, '
        f'got {layout!r}.'
      )
    checked.append((pattern, layout))
  return tuple(checked)


def describe(
  params,
  *,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
  layouts: Mapping[str, str | Layout | Block] | None = None,
  strict: bool = False,
  block_rules: str = 'reference',
) -> tuple[list[Decision], list[str]]:
  """Every leaf's role, layout and block, and the warnings about the tree.

  Takes the options of :func:`default_partition`; returns ``(decisions,
  warnings)`` with one :class:`Decision` per leaf in ``jax.tree.leaves``
  order. Raises where :func:`default_partition` raises.
  """
  _check_options(
    num_heads, num_kv_heads, head_dim, value_blocks, strict, block_rules
  )
  user = _check_layouts(layouts)
  infos = leaf_infos(params)
  roles = [classify(info.path) for info in infos]
  tree = _Tree(infos, roles)
  heads = _Heads(num_heads, num_kv_heads, head_dim, infos, roles, tree)
  tree.heads = heads
  # Check the queries first: their errors are the clearest.
  order = sorted(range(len(infos)), key=lambda i: roles[i] is not Role.QUERY)
  decisions: list[Decision | None] = [None] * len(infos)
  for i in order:
    info, role = infos[i], roles[i]
    heads.where = path_str(info.path)
    layout, source = _layout(info, role, tree, heads, user)
    if isinstance(layout, Block):
      decisions[i] = Decision(info.path, info.shape, role, None, layout, source)
      continue
    try:
      if (
        layout.role is Role.FUSED_QKV
        and _own_name(info.path) in names_lib.INTERLEAVED_QKV
        and source == 'names and shape'
        and info.wrapper is None
      ):
        block = _interleaved_qkv_block(
          info, list(layout.axes), heads, value_blocks, block_rules
        )
      else:
        block = block_for(layout, info.shape, heads, value_blocks, block_rules)
    except ValueError as error:
      message = str(error)
      if not message.startswith(path_str(info.path)):
        message = (
          f'{path_str(info.path)} (shape {info.shape}, layout {layout}): '
          f'{message}'
        )
      raise ValueError(message) from None
    decisions[i] = Decision(
      info.path, info.shape, layout.role, layout, block, source
    )
  messages = _unrecognised(decisions)
  if strict and messages:
    raise ValueError('\n'.join(messages))
  return decisions, messages


_ATTENTION_ROLES = {
  Role.QUERY,
  Role.KEY,
  Role.VALUE,
  Role.ATTENTION_OUT,
  Role.FUSED_QKV,
}


def _looks_like_a_transformer(decisions: list[Decision]) -> bool:
  return bool(
    {d.role for d in decisions} & (_ATTENTION_ROLES | {Role.EMBEDDING})
  ) or any(_is_attention(name.lower()) for d in decisions for name in d.path)


def _unrecognised(decisions: list[Decision]) -> list[str]:
  """Warnings for a transformer-looking tree with leaves of unknown role."""
  if not _looks_like_a_transformer(decisions):
    return []
  return [
    f'{path_str(d.path)} (shape {d.shape}): not recognised as any '
    'transformer part, so it gets one v per leaf (per stacked layer). If it '
    'is one, state its layout, e.g. '
    f"adam_mini(..., layouts={{'{_pattern_for(d.path)}': 'mlp: in out'}}), "
    'or pass strict=True to make this an error.'
    for d in decisions
    if d.role is Role.OTHER
    and len(d.shape) >= 2
    and d.source not in ('layouts=', 'name')
  ]


def default_partition(
  params,
  *,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
  layouts: Mapping[str, str | Layout | Block] | None = None,
  strict: bool = False,
  block_rules: str = 'reference',
):
  """Adam-mini's blocks for a transformer's params (the default label function).

  Recognised without any option (see the module doc for how): Flax Linen and
  NNX attention and ``Dense`` layers, Hugging Face Flax ports (Llama, Mistral,
  Gemma, GPT-2 and its ``Conv1D``, BERT, ...), MaxText (scanned or not, MoE,
  MLA), gemma, Equinox, penzai and haliax-annotated trees. Where heads are
  flattened into one axis (``q_proj`` of shape ``(D, H * Dh)``) the head
  counts come from ``num_heads``/``num_kv_heads``/``head_dim``.

  Args:
    params: the params pytree (arrays, ``ShapeDtypeStruct``s, boxed or NNX
      state).
    num_heads: query heads, needed where heads are flattened into an axis.
    num_kv_heads: key/value heads for grouped-query attention (defaults to the
      head count implied by ``head_dim``, else the queries' head size).
    head_dim: coordinates per head, where it is not ``D / num_heads``.
    value_blocks: ``'neuron'`` (one ``v`` per output neuron of the value
      projection) or ``'whole'`` (one ``v`` per value leaf, the reference's
      advice for runs under about 10k steps).
    layouts: your statement of leaves' layouts, by path pattern: a mapping
      from a glob matched against the leaf's path (``'a/b/c'``; it may match
      the path's end) to ``'<role>: <kind> ...'``
      (:class:`~optax_adam_mini.layout.Layout`), or to a :class:`Block` to
      use as is. For example ``{'attn/q_einsum/w': 'query: heads in
      head_dim', 'router/w': 'router: in out'}``.
    strict: raise instead of warning where a leaf of rank >= 2 in a
      transformer-looking tree is not recognised.
    block_rules: ``'reference'`` (the reference implementation's blocks,
      above) or ``'slim'``: SlimAdam's rules by layer type (arXiv
      2503.01843), one ``v`` per output neuron for queries and keys, per
      input neuron for values, attention outputs and MLPs, per coordinate
      for norm scales; embeddings and the LM head per token as the
      reference's (:mod:`optax_adam_mini.layout` has the table). The
      state stays reduced: one ``v`` per neuron, not per parameter.

  Returns:
    A pytree of :class:`Block` with the structure of ``params``.

  Raises:
    ValueError: where a leaf's layout cannot be told, attention heads cannot
      be sized, or (``strict=True``) a leaf is not recognised.

  >>> import jax.numpy as jnp
  >>> params = {'embed': {'embedding': jnp.zeros((100, 16))},
  ...           'q_proj': {'kernel': jnp.zeros((16, 16))},
  ...           'norm': {'scale': jnp.zeros(16)}}
  >>> default_partition(params, num_heads=4)
  {'embed': {'embedding': Block.along(0)}, 'norm': {'scale': Block.whole()}, \
'q_proj': {'kernel': Block.heads(1, 4)}}
  >>> default_partition({'w': jnp.zeros((4, 2, 8))},
  ...                   layouts={'w': 'query: heads head_dim in'})
  {'w': Block.along(0)}
  """
  decisions, messages = describe(
    params,
    num_heads=num_heads,
    num_kv_heads=num_kv_heads,
    head_dim=head_dim,
    value_blocks=value_blocks,
    layouts=layouts,
    strict=strict,
    block_rules=block_rules,
  )
  for message in messages:
    warnings.warn(message, stacklevel=2)
  treedef = jax.tree_util.tree_structure(params)
  return jax.tree_util.tree_unflatten(treedef, [d.block for d in decisions])


def label_function(
  partition=None,
  *,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
  layouts: Mapping[str, str | Layout | Block] | None = None,
  strict: bool = False,
  block_rules: str = 'reference',
):
  """The partition in effect: ``partition``, or the default with its options.

  The options configure :func:`default_partition`; with ``partition`` given
  they must be left at their defaults (build them into it instead). They are
  checked here, at once, not at the first trace.
  """
  given = {
    'num_heads': num_heads,
    'num_kv_heads': num_kv_heads,
    'head_dim': head_dim,
    'layouts': layouts,
  }
  given = [name for name, value in given.items() if value is not None]
  if value_blocks != 'neuron':
    given.append('value_blocks')
  if strict:
    given.append('strict')
  if block_rules != 'reference':
    given.append('block_rules')
  if partition is not None:
    if given:
      raise ValueError(
        f'{", ".join(given)} configure the default partition; with '
        'partition= given, build them into it instead (for example '
        'functools.partial(default_partition, num_heads=...)).'
      )
    return partition
  _check_options(
    num_heads, num_kv_heads, head_dim, value_blocks, strict, block_rules
  )
  return functools.partial(
    default_partition,
    num_heads=num_heads,
    num_kv_heads=num_kv_heads,
    head_dim=head_dim,
    value_blocks=value_blocks,
    layouts=dict(_check_layouts(layouts)) or None,
    strict=strict,
    block_rules=block_rules,
  )
