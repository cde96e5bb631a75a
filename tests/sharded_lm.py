"""A tiny Llama-style LM and a sharded Adam-mini train step, for the tests.

Reusable outside the tests (the GPU benchmark builds on it): the params are a
plain dict in Hugging Face / Flax layout (kernels ``(in, out)``), with
grouped-query attention, optionally scanned (a leading layer axis). Mesh
layouts map each leaf to a ``PartitionSpec``; :func:`make_train_step` jits a
step over a mesh in Auto or Explicit mode with the optimizer state laid out by
:func:`optax_adam_mini.state_shardings`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adam_mini


@dataclasses.dataclass(frozen=True)
class Config:
  vocab: int = 64
  dim: int = 32
  heads: int = 4
  kv_heads: int = 2
  head_dim: int = 8
  hidden: int = 64
  layers: int = 2
  scanned: bool = False


def init_params(config: Config, seed: int = 0):
  """The params: ``{'model': {...}, 'lm_head': {...}}``, float32."""
  c = config
  shapes = {
    'self_attn': {
      'q_proj': (c.dim, c.heads * c.head_dim),
      'k_proj': (c.dim, c.kv_heads * c.head_dim),
      'v_proj': (c.dim, c.kv_heads * c.head_dim),
      'o_proj': (c.heads * c.head_dim, c.dim),
    },
    'mlp': {
      'gate_proj': (c.dim, c.hidden),
      'up_proj': (c.dim, c.hidden),
      'down_proj': (c.hidden, c.dim),
    },
  }
  rng = np.random.default_rng(seed)

  def kernel(shape):
    return jnp.asarray(
      rng.normal(size=shape) / math.sqrt(shape[-2]), jnp.float32
    )

  def layer(prefix=()):
    out = {
      group: {
        name: {'kernel': kernel(prefix + shape)}
        for name, shape in leaves.items()
      }
      for group, leaves in shapes.items()
    }
    for norm in ('input_layernorm', 'post_attention_layernorm'):
      out[norm] = {'scale': jnp.ones(prefix + (c.dim,), jnp.float32)}
    return out

  if c.scanned:
    layers = layer((c.layers,))
  else:
    layers = {str(i): layer() for i in range(c.layers)}
  return {
    'model': {
      'embed_tokens': {'embedding': kernel((c.vocab, c.dim)) * 0.5},
      'layers': layers,
      'norm': {'scale': jnp.ones((c.dim,), jnp.float32)},
    },
    'lm_head': {'kernel': kernel((c.dim, c.vocab))},
  }


def make_tx(config: Config, learning_rate: float = 1e-2):
  return optax_adam_mini.adam_mini(
    learning_rate, num_heads=config.heads, num_kv_heads=config.kv_heads
  )


def make_batch(config: Config, batch: int = 8, length: int = 8, seed: int = 1):
  rng = np.random.default_rng(seed)
  return jnp.asarray(
    rng.integers(0, config.vocab, (batch, length + 1)), jnp.int32
  )


# Mesh layouts: mesh shape, axis names, how params and the batch are sharded.
# 'fsdp' shards the axes the blocks reduce over, 'tp' the heads / neurons
# (Megatron: column-parallel q/k/v/gate/up, row-parallel o/down).
LAYOUTS = {
  'dp': ((8,), ('dp',)),
  'fsdp': ((8,), ('fsdp',)),
  'tp': ((8,), ('tp',)),
  'fsdp_tp': ((2, 4), ('fsdp', 'tp')),
  'dp_fsdp_tp': ((2, 2, 2), ('dp', 'fsdp', 'tp')),
}

# (leaf's own axes, from the end) -> names for fsdp and tp.
_RULES = {
  'embedding': ((None, 'fsdp'), ('tp', None)),
  'lm_head': (('fsdp', None), (None, 'tp')),
  'q_proj': (('fsdp', None), (None, 'tp')),
  'k_proj': (('fsdp', None), (None, 'tp')),
  'v_proj': (('fsdp', None), (None, 'tp')),
  'o_proj': ((None, 'fsdp'), ('tp', None)),
  'gate_proj': (('fsdp', None), (None, 'tp')),
  'up_proj': (('fsdp', None), (None, 'tp')),
  'down_proj': ((None, 'fsdp'), ('tp', None)),
}


def param_specs(params, layout: str):
  """A ``PartitionSpec`` per leaf for one of :data:`LAYOUTS`."""
  axes = set(LAYOUTS[layout][1])

  def spec(path, leaf):
    names = [getattr(k, 'key', None) for k in path]
    rule = next((_RULES[n] for n in reversed(names) if n in _RULES), None)
    if rule is None:  # norm scales: shard the one (reduced) axis by fsdp
      own = ('fsdp',)
    else:
      fsdp, tp = rule
      own = tuple(f if f in axes else t for f, t in zip(fsdp, tp))
    own = tuple(a if a in axes else None for a in own)
    return P(*((None,) * (leaf.ndim - len(own)) + own))

  return jax.tree_util.tree_map_with_path(spec, params)


def batch_spec(layout: str):
  data = tuple(a for a in LAYOUTS[layout][1] if a in ('dp', 'fsdp'))
  return P(data if len(data) > 1 else (data[0] if data else None))


def make_mesh(layout: str, explicit: bool):
  shape, names = LAYOUTS[layout]
  kind = (
    jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
  )
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(names))


def _rms_norm(x, scale):
  return (
    x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale
  )


def forward(params, tokens, config: Config):
  """Logits ``(B, T, V)``; the params must be replicated (see `loss_fn`)."""
  c = config
  model = params['model']
  x = jax.nn.one_hot(tokens, c.vocab) @ model['embed_tokens']['embedding']
  batch, length = tokens.shape
  mask = jnp.tril(jnp.ones((length, length), bool))
  for i in range(c.layers):
    if c.scanned:
      layer = jax.tree.map(lambda a, i=i: a[i], model['layers'])
    else:
      layer = model['layers'][str(i)]
    attn = layer['self_attn']
    h = _rms_norm(x, layer['input_layernorm']['scale'])
    q = (h @ attn['q_proj']['kernel']).reshape(
      batch, length, c.heads, c.head_dim
    )
    k = (h @ attn['k_proj']['kernel']).reshape(
      batch, length, c.kv_heads, c.head_dim
    )
    v = (h @ attn['v_proj']['kernel']).reshape(
      batch, length, c.kv_heads, c.head_dim
    )
    k = jnp.repeat(k, c.heads // c.kv_heads, axis=2)
    v = jnp.repeat(v, c.heads // c.kv_heads, axis=2)
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(c.head_dim)
    scores = jnp.where(mask, scores, -1e9)
    out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, -1), v)
    x = x + out.reshape(batch, length, -1) @ attn['o_proj']['kernel']
    mlp = layer['mlp']
    h = _rms_norm(x, layer['post_attention_layernorm']['scale'])
    gate = jax.nn.silu(h @ mlp['gate_proj']['kernel'])
    x = x + (gate * (h @ mlp['up_proj']['kernel'])) @ mlp['down_proj']['kernel']
  x = _rms_norm(x, model['norm']['scale'])
  return x @ params['lm_head']['kernel']


def _replicate(x):
  """Gathers a (sharded) param for the forward pass, in either mesh mode."""
  aval = jax.typeof(x) if hasattr(jax, 'typeof') else None
  sharding = getattr(aval, 'sharding', None)
  mesh = getattr(sharding, 'mesh', None)
  if jax.sharding.AxisType.Explicit in tuple(getattr(mesh, 'axis_types', ())):
    return jax.sharding.reshard(x, P())
  return x


def loss_fn(params, tokens, config: Config):
  """Mean next-token cross-entropy. Under Explicit sharding the params are
  gathered first (FSDP-style); under Auto, XLA picks the layout."""
  params = jax.tree.map(_replicate, params)
  logits = forward(params, tokens[:, :-1], config)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, tokens[:, 1:]
  ).mean()


def make_train_step(
  tx, config: Config, param_shardings=None, state_shardings=None
):
  """A jitted ``(params, state, tokens) -> (params, state, loss)``.

  With shardings given (Auto mode), the outputs keep the inputs' layout, so
  the step's types are stable and the second call compiles nothing. Under
  Explicit mode leave them ``None``: the types carry the shardings.
  """

  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, config)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  if param_shardings is None:
    return jax.jit(step)
  return jax.jit(step, out_shardings=(param_shardings, state_shardings, None))


def one_device_trajectory(config: Config, steps: int):
  """The reference run on one device: (params, state, loss) after each step."""
  tx = make_tx(config)
  device = jax.devices()[0]
  params = jax.device_put(init_params(config), device)
  tokens = jax.device_put(make_batch(config), device)
  state = jax.jit(tx.init)(params)
  step = make_train_step(tx, config)
  out = []
  for _ in range(steps):
    params, state, loss = step(params, state, tokens)
    out.append(jax.device_get((params, state, loss)))
  return out


def make_update(tx, param_shardings=None, state_shardings=None):
  """The jitted optimizer update alone: ``(grads, state, params)``."""

  def update(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if param_shardings is None:
    return jax.jit(update)
  return jax.jit(update, out_shardings=(param_shardings, state_shardings))


_COLLECTIVE = re.compile(r'=\s*(\(?[^=]*?\)?)\s+all-gather(?:-start)?\(')
_SHAPE = re.compile(r'[a-z]+\d*\[([\d,]*)\]')


def all_gathers(hlo_text: str) -> list[tuple[int, ...]]:
  """The result shape of each all-gather in compiled HLO text."""
  shapes = []
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if match is None:
      continue
    found = [
      tuple(int(d) for d in dims.split(',') if d)
      for dims in _SHAPE.findall(match.group(1))
    ]
    shapes.append(max(found, key=math.prod))  # async: (operand, result)
  return shapes


def shard(tree, specs, mesh):
  return jax.tree.map(
    lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs
  )
