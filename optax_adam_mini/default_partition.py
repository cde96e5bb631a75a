"""The built-in label function: transformer layouts mapped to Hessian blocks.

Adam-mini's blocks follow the near-block-diagonal Hessian of transformers
(Zhang et al., 2024, and the reference implementation v1.1.1):

================================  ============================================
leaf                              one ``v`` per
================================  ============================================
query, key                        head
value                             output neuron (or whole leaf: ``'whole'``)
attention output, MLP, Dense      output neuron
embedding, LM head                token
norm scale                        leaf
bias                              coordinate (plain Adam)
anything else                     leaf
================================  ============================================

A leaf's role comes from the names on its path (see :func:`classify`); its
layout from the role and its shape. Extra leading axes beyond a role's own rank
are layer axes of scanned or stacked layers, and each layer keeps its own
blocks. Kernels are in Flax layout, ``(in, out)``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import jax

from optax_adam_mini.block import Block
from optax_adam_mini.partition import (
  Path,
  leaves_with_paths,
  path_names,
  path_str,
)


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
  DENSE = 'dense'
  NORM = 'norm'
  BIAS = 'bias'
  OTHER = 'other'


# Module names, lower-cased, compared with the leaf's parent module.
_EMBEDDING = frozenset({
    'embed_tokens', 'embed', 'embedding', 'embeddings', 'embedder', 'wte',
    'wpe', 'tok_embeddings', 'token_embedding', 'token_embeddings',
    'word_embeddings', 'position_embeddings', 'pos_embedding',
    'position_embedding',
})  # fmt: skip
_OUTPUT = frozenset(
  {'lm_head', 'output', 'final_layer', 'unembed', 'output_layer', 'head'}
)
_QUERY = frozenset({'query', 'q_proj', 'wq', 'to_q'})
_KEY = frozenset({'key', 'k_proj', 'wk', 'to_k'})
_VALUE = frozenset({'value', 'v_proj', 'wv', 'to_v'})
_ATTENTION_OUT = frozenset({'out', 'o_proj', 'wo', 'out_proj', 'to_out'})
_FUSED_QKV = frozenset(
  {'c_attn', 'qkv', 'qkv_proj', 'wqkv', 'query_key_value', 'in_proj'}
)
_MLP_PROJ = frozenset({
    'gate_proj', 'up_proj', 'down_proj', 'c_fc', 'fc1', 'fc2', 'w1', 'w2',
    'w3', 'wi', 'wi_0', 'wi_1', 'dense_h_to_4h', 'dense_4h_to_h',
})  # fmt: skip
_MLP_CONTAINERS = frozenset(
  {'mlp', 'ffn', 'feed_forward', 'feedforward', 'mlp_block'}
)
_BIAS = frozenset({'bias', 'b'})
# Flax MultiHeadAttention names, whose kernels carry heads as their own axis.
_FLAX_ATTENTION = frozenset({'query', 'key', 'value', 'out'})

# The rank of each role's own layout; extra leading axes are layer axes.
_BASE_RANK = {
  Role.EMBEDDING: 2,
  Role.OUTPUT: 2,
  Role.QUERY: 2,
  Role.KEY: 2,
  Role.VALUE: 2,
  Role.ATTENTION_OUT: 2,
  Role.FUSED_QKV: 2,
  Role.MLP: 2,
  Role.DENSE: 2,
  Role.NORM: 1,
}


def _is_norm(name: str) -> bool:
  return (
    'norm' in name or name in ('ln', 'ln1', 'ln2') or name.startswith('ln_')
  )


def _is_attention(name: str) -> bool:
  return 'attn' in name or 'attention' in name


def classify(path: Sequence[str]) -> Role:
  """The role of the leaf at ``path`` (names as in :func:`path_names`).

  >>> classify(('model', 'layers', '0', 'self_attn', 'q_proj', 'kernel'))
  <Role.QUERY: 'query'>
  >>> classify(('h', '0', 'ln_1', 'scale'))
  <Role.NORM: 'norm'>
  """
  names = [str(name).lower() for name in path]
  if not names:
    return Role.OTHER
  leaf = names[-1]
  module = names[-2] if len(names) > 1 else ''
  ancestors = names[:-1]
  if leaf in _BIAS:
    return Role.BIAS
  if _is_norm(module) or _is_norm(leaf):
    return Role.NORM
  if leaf == 'embedding' or module in _EMBEDDING:
    return Role.EMBEDDING
  if module in _OUTPUT:
    return Role.OUTPUT
  if module in _FUSED_QKV:
    return Role.FUSED_QKV
  if module in _QUERY:
    return Role.QUERY
  if module in _KEY:
    return Role.KEY
  if module in _VALUE:
    return Role.VALUE
  in_attention = any(_is_attention(name) for name in ancestors[:-1])
  if module in _ATTENTION_OUT or (module == 'c_proj' and in_attention):
    return Role.ATTENTION_OUT
  if module in _MLP_PROJ or any(name in _MLP_CONTAINERS for name in ancestors):
    return Role.MLP
  if leaf == 'kernel':
    return Role.DENSE
  return Role.OTHER


def default_weight_decay_mask(params):
  """``True`` for every leaf except norm scales and biases.

  This is the reference implementation's rule (it skips names containing
  ``norm``, ``ln`` or ``bias``), decided by :func:`classify`.
  """
  return jax.tree_util.tree_map_with_path(
    lambda key_path, _: _decays(key_path), params
  )


def _decays(key_path) -> bool:
  return classify(path_names(key_path)) not in (Role.NORM, Role.BIAS)


def default_partition(
  params,
  *,
  num_heads: int | None = None,
  num_kv_heads: int | None = None,
  head_dim: int | None = None,
  value_blocks: str = 'neuron',
):
  """Adam-mini's blocks for a transformer's params (the default label function).

  Recognised layouts (kernels in Flax ``(in, out)`` layout):

  * Flax Linen ``MultiHeadDotProductAttention`` and NNX ``MultiHeadAttention``:
    ``query``/``key``/``value`` kernels ``(D, H, Dh)`` (GQA ``(D, K, Dh)``),
    ``out`` kernel ``(H, Dh, D)``;
  * Llama-style ``self_attn/{q,k,v,o}_proj/kernel`` with heads flattened,
    ``(D, H*Dh)``, split with ``num_heads``/``num_kv_heads``/``head_dim``;
  * GPT-2's fused ``c_attn`` (``(D, 3D)`` or ``(3D, D)``): per head for the
    query and key thirds, per neuron for the value third;
  * MLP projections, other ``Dense`` kernels, ``Embed`` tables, LM heads,
    norm scales and biases.

  Args:
    params: the params pytree (arrays, ``ShapeDtypeStruct``s or NNX state).
    num_heads: query heads, needed where heads are flattened into an axis.
    num_kv_heads: key/value heads for grouped-query attention (defaults to the
      head count implied by ``head_dim``, else ``num_heads``).
    head_dim: coordinates per head, where it is not ``D / num_heads``.
    value_blocks: ``'neuron'`` (one ``v`` per output neuron of the value
      projection) or ``'whole'`` (one ``v`` per value leaf, the reference's
      advice for runs under about 10k steps).

  Returns:
    A pytree of :class:`Block` with the structure of ``params``.

  Raises:
    ValueError: where a leaf is attention with flattened heads and the head
      count cannot be derived, or the heads do not divide the leaf.

  >>> import jax.numpy as jnp
  >>> params = {'embed': {'embedding': jnp.zeros((100, 16))},
  ...           'q_proj': {'kernel': jnp.zeros((16, 16))},
  ...           'norm': {'scale': jnp.zeros(16)}}
  >>> default_partition(params, num_heads=4)
  {'embed': {'embedding': Block.along(0)}, 'norm': {'scale': Block.whole()}, \
'q_proj': {'kernel': Block.heads(1, 4)}}
  """
  if value_blocks not in ('neuron', 'whole'):
    raise ValueError(
      f"value_blocks must be 'neuron' or 'whole', got {value_blocks!r}."
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
  leaves, treedef = leaves_with_paths(params)
  roles = [classify(path) for path, _ in leaves]
  heads = _Heads(num_heads, num_kv_heads, head_dim, leaves, roles)
  blocks = [
    _block_for(role, path, tuple(leaf.shape), heads, value_blocks)
    for (path, leaf), role in zip(leaves, roles)
  ]
  return jax.tree_util.tree_unflatten(treedef, blocks)


class _Heads:
  """Head counts for flattened attention leaves, checked against the tree."""

  def __init__(self, num_heads, num_kv_heads, head_dim, leaves, roles):
    self.num_heads = num_heads
    self.num_kv_heads = num_kv_heads
    self.head_dim = head_dim
    # With only num_heads given, a key of GQA takes its head size from the
    # queries: the one head_dim they all imply.
    self.query_head_dim = None
    for (path, leaf), role in zip(leaves, roles):
      # Check the queries first: their errors are the clearest.
      if role is Role.QUERY and not self.explicit_heads(path, role, leaf.shape):
        if len(leaf.shape) >= 2:
          self.head_dim_for(role, path, leaf.shape[-1])
    if head_dim is None and num_heads is not None:
      dims = {
        leaf.shape[-1] // num_heads
        for (path, leaf), role in zip(leaves, roles)
        if role is Role.QUERY
        and len(leaf.shape) >= 2
        and leaf.shape[-1] % num_heads == 0
        and not self.explicit_heads(path, role, leaf.shape)
      }
      if len(dims) == 1:
        self.query_head_dim = dims.pop()

  def explicit_heads(self, path: Path, role: Role, shape) -> bool:
    """Whether a Flax attention kernel carries heads as an axis of its own."""
    if len(path) < 2 or path[-2].lower() not in _FLAX_ATTENTION:
      return False
    if len(shape) < 3:
      return False
    if len(shape) >= 4:
      return True
    head_count = shape[0] if role is Role.ATTENTION_OUT else shape[1]
    counts = {self.num_heads, self.num_kv_heads} - {None}
    return not counts or head_count in counts

  def head_dim_for(self, role: Role, path: Path, size: int) -> int:
    """Coordinates per head for a query or key axis of ``size``."""
    where = f'{path_str(path)} ({role.value}, {size} outputs)'
    if role is Role.QUERY:
      counts = [(self.num_heads, 'num_heads')]
    else:
      counts = [(self.num_kv_heads, 'num_kv_heads')]
    if self.head_dim is not None:
      dim = self.head_dim
      source = f'head_dim={dim}'
    elif counts[0][0] is not None:
      count, name = counts[0]
      if size % count:
        raise ValueError(
          f'{where}: {name}={count} does not divide the {size} outputs.'
        )
      dim = size // count
      source = f'{name}={count}'
    elif role is Role.KEY and self.query_head_dim is not None:
      dim = self.query_head_dim
      source = f'the queries (num_heads={self.num_heads})'
    elif role is Role.KEY and self.num_heads is not None:
      # No queries to learn the head size from: assume as many key heads.
      if size % self.num_heads:
        raise ValueError(
          f'{where}: num_heads={self.num_heads} does not divide the {size} '
          'outputs; pass num_kv_heads= or head_dim=.'
        )
      dim = size // self.num_heads
      source = f'num_heads={self.num_heads}'
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
    if self.head_dim is not None and counts[0][0] is not None:
      count, name = counts[0]
      if count * self.head_dim != size:
        raise ValueError(
          f'{where}: {name}={count} heads of head_dim={self.head_dim} do '
          f'not make its {size} outputs.'
        )
    return dim


def _block_for(
  role: Role, path: Path, shape: tuple[int, ...], heads: _Heads, value_blocks
) -> Block:
  """The default block of one leaf."""
  if role is Role.BIAS:
    return Block.elementwise()
  rank = len(shape)
  if role is Role.OTHER or rank < _BASE_RANK[role]:
    return Block.whole()
  if role is Role.NORM:
    return Block.along(*range(rank - 1))  # one v per layer's norm

  if heads.explicit_heads(path, role, shape):
    # Flax MultiHeadAttention: (..., D, H, Dh) for q/k/v, (..., H, Dh, D) out.
    layers = tuple(range(rank - 3))
    if role in (Role.QUERY, Role.KEY):
      return Block.along(*layers, rank - 2)
    if role is Role.VALUE:
      if value_blocks == 'whole':
        return Block.along(*layers)
      return Block.along(*layers, rank - 2, rank - 1)
    return Block.along(*layers, rank - 1)

  layers = tuple(range(rank - 2))
  if role in (Role.QUERY, Role.KEY):
    dim = heads.head_dim_for(role, path, shape[-1])
    return Block.heads(rank - 1, dim, along=layers)
  if role is Role.VALUE and value_blocks == 'whole':
    return Block.along(*layers)
  if role is Role.EMBEDDING:
    return Block.along(*layers, rank - 2)  # (V, D): one v per token row
  if role is Role.FUSED_QKV:
    return _fused_qkv_block(path, shape, heads, value_blocks, layers)
  # Output head, value, attention out, MLP, Dense: (in, out), per out neuron.
  return Block.along(*layers, rank - 1)


def _fused_qkv_block(path, shape, heads: _Heads, value_blocks, layers):
  """GPT-2's ``c_attn``: query, key and value thirds along one axis."""
  rank = len(shape)
  where = f'{path_str(path)} (fused q/k/v, shape {shape})'
  for axis, model_dim in ((rank - 1, shape[-2]), (rank - 2, shape[-1])):
    fused = shape[axis]
    if heads.num_heads is None and heads.head_dim is None:
      raise ValueError(
        f'{where}: pass num_heads= (or head_dim=) so its query and key '
        'parts can be split into heads.'
      )
    dim = heads.head_dim or model_dim // heads.num_heads
    num_q = heads.num_heads or model_dim // dim
    num_kv = heads.num_kv_heads or num_q
    if dim * (num_q + 2 * num_kv) == fused:
      break
  else:
    raise ValueError(
      f'{where}: no axis holds query, key and value of '
      f'{heads.num_heads} heads ({heads.num_kv_heads} key/value heads) of '
      'the model width; check num_heads, num_kv_heads and head_dim.'
    )
  query_key = Block.heads(axis, dim, along=layers)
  if value_blocks == 'whole':
    value = Block.along(*layers)
  else:
    value = Block.along(*layers, axis)
  return Block.concat(
    axis,
    [
      (num_q * dim, query_key),
      (num_kv * dim, query_key),
      (num_kv * dim, value),
    ],
  )
