"""The harness Llama at a tiny size, on a mesh: the sharding and multi-host tests.

The model is ``benchmarks/scan_llama.py``'s (grouped-query attention, RoPE,
Hugging Face / Flax names, kernels ``(in, out)``), per layer or stacked, run
in float32 without remat. Mesh layouts map each leaf to a ``PartitionSpec``;
:func:`make_train_step` jits a step over a mesh in Auto or Explicit mode with
the optimizer state laid out by :func:`optax_adam_mini.state_shardings`.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import scan_llama

# 4 query heads share 2 key/value heads; 'tp' cuts 8 shards through them.
CONFIG = scan_llama.LlamaConfig(
  'llama-sharding-test',
  d_model=32,
  n_layers=2,
  n_heads=4,
  n_kv_heads=2,
  d_ff=64,
  vocab=64,
)


def init_params(stacked: bool = False, seed: int = 0):
  """The params: ``{'model': {...}, 'lm_head': {...}}``, float32; with
  ``stacked``, the same values with the layers' leaves on a leading axis."""
  shapes = scan_llama.llama_shapes(CONFIG, stacked=False)
  params = scan_llama.init_from_shapes(shapes, np.random.default_rng(seed))
  return stack_layers(params) if stacked else params


def stack_layers(params):
  """A per-layer tree (``layers/0``, ``layers/1``, ...) as a stacked one."""
  layers = params['model']['layers']
  stacked = jax.tree.map(
    lambda *xs: jnp.stack(xs), *(layers[str(i)] for i in range(len(layers)))
  )
  return {**params, 'model': {**params['model'], 'layers': stacked}}


def make_tx(learning_rate: float = 1e-2, name: str = 'adam_mini'):
  return scan_llama.make_tx(
    name,
    learning_rate,
    num_heads=CONFIG.n_heads,
    num_kv_heads=CONFIG.n_kv_heads,
  )


def make_batch(batch: int = 8, length: int = 8, seed: int = 1):
  rng = np.random.default_rng(seed)
  return jnp.asarray(
    rng.integers(0, CONFIG.vocab, (batch, length + 1)), jnp.int32
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


def _replicated(x):
  """A param as the forward pass uses it: under Explicit mesh axes gathered
  first (FSDP-style); under Auto, as it is (XLA picks the layout)."""
  mesh = getattr(jax.typeof(x).sharding, 'mesh', None)
  if jax.sharding.AxisType.Explicit in tuple(getattr(mesh, 'axis_types', ())):
    return jax.sharding.reshard(x, P())
  return x


def loss_fn(params, tokens):
  """Mean next-token cross-entropy of the harness model; tokens (B, T+1)."""
  params = jax.tree.map(_replicated, params)
  return scan_llama.llama_loss(params, tokens, CONFIG, 'none', jnp.float32)


def make_train_step(tx, param_shardings=None, state_shardings=None):
  """A jitted ``(params, state, tokens) -> (params, state, loss)``.

  With shardings given (Auto mode), the outputs keep the inputs' layout, so
  the step's types are stable and the second call compiles nothing. Under
  Explicit mode leave them ``None``: the types carry the shardings.
  """

  def step(params, state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  if param_shardings is None:
    return jax.jit(step)
  return jax.jit(step, out_shardings=(param_shardings, state_shardings, None))


def one_device_trajectory(
  steps: int, stacked: bool = False, name: str = 'adam_mini'
):
  """The reference run on one device: (params, state, loss) after each step."""
  tx = make_tx(name=name)
  device = jax.devices()[0]
  params = jax.device_put(init_params(stacked), device)
  tokens = jax.device_put(make_batch(), device)
  state = jax.jit(tx.init)(params)
  step = make_train_step(tx)
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
