"""A small training problem shared by the checkpoint tests, and their worker.

``tests/test_checkpoint.py`` and ``tests/test_robustness.py`` import this
module for the problem (:func:`init_params`, :func:`make_tx`,
:func:`make_step`, :func:`batch`); the checkpoint tests also run it in a fresh
process, to restore a checkpoint there:

  python -m _support.checkpoint_worker JOBS.json   (with tests/ on the path)

where ``JOBS.json`` is a list of jobs, each a dict with keys ``ckpt`` (the Orbax
checkpoint of ``{'params', 'opt_state'}``), ``start`` (the step it was saved
at), ``steps`` (how many steps to run after it), ``mu_dtype`` (``'float32'``,
``'bfloat16'``, or ``'int8'``/``'int4'``: see :func:`mu_dtype_of`), ``mesh`` (``null`` for one default device, or a device count
to restore onto a ``(data, model)`` mesh with the state-sharding helper) and
``out`` (an ``.npz`` path for the final params and optimizer state, see
:func:`tree_to_npz`). Set ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
in the environment to give the worker ``N`` CPU devices.

The model is the harness Llama (``benchmarks/scan_llama.py``) with one layer,
one subtree per layer, computed in the params' dtype.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import scan_llama

CONFIG = scan_llama.LlamaConfig(
  'llama-checkpoint-test',
  d_model=8,
  n_layers=1,
  n_heads=2,
  n_kv_heads=2,
  d_ff=32,
  vocab=16,
)
VOCAB = CONFIG.vocab
HEADS = CONFIG.n_heads
BATCH = 4
SEQ = 6


def init_params(seed: int = 0, dtype=jnp.float32):
  """The params, ``{'model': {'layers': {'0': ...}, ...}, 'lm_head': ...}``:
  drawn in float32, then cast, so that every dtype starts from one init."""
  shapes = scan_llama.llama_shapes(CONFIG, stacked=False)
  params = scan_llama.init_from_shapes(shapes, np.random.default_rng(seed))
  return jax.tree.map(lambda x: x.astype(dtype), params)


def loss_fn(params, tokens):
  """Next-token cross-entropy over ``tokens`` (B, T), in the params' dtype."""
  dtype = jax.tree.leaves(params)[0].dtype
  return scan_llama.llama_loss(params, tokens, CONFIG, 'none', dtype)


def batch(step):
  """The batch of ``step``: a pure function of the step index."""
  key = jax.random.fold_in(jax.random.key(1234), step)
  return jax.random.randint(key, (BATCH, SEQ), 0, VOCAB)


def mu_dtype_of(name: str):
  """A dtype name, or ``'int8'``/``'int4'``: quantized m sized for this model.

  Groups of 4 and every leaf of 16+ coordinates quantized (the norm scales,
  8 coordinates, keep float32 m), with stochastic rounding everywhere, so
  that a restart must restore the rounding key as well.
  """
  if name in ('int8', 'int4'):
    from optax_adam_mini import MomentQuantization

    return MomentQuantization(
      bits=int(name[3:]),
      group_size=4,
      min_size=16,
      stochastic_rounding='all',
    )
  return jnp.dtype(name)


def make_tx(mu_dtype: str = 'float32'):
  """Adam-mini inside a chain with clipping and a warmup-cosine schedule."""
  from optax_adam_mini import adam_mini

  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=3e-2, warmup_steps=4, decay_steps=40
  )
  return optax.chain(
    optax.clip_by_global_norm(1.0),
    adam_mini(
      schedule,
      weight_decay=0.1,
      mu_dtype=mu_dtype_of(mu_dtype),
      num_heads=HEADS,
    ),
  )


def make_step(tx):
  """A jitted train step ``(params, opt_state, step) -> (params, opt_state)``."""

  @jax.jit
  def step(params, opt_state, step_index):
    grads = jax.grad(loss_fn)(params, batch(step_index))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def run(step, params, opt_state, start, steps):
  for i in range(start, start + steps):
    params, opt_state = step(params, opt_state, jnp.int32(i))
  return params, opt_state


# Meshes and shardings --------------------------------------------------------


def make_mesh(num_devices: int):
  """A ``(data, model)`` mesh over the first ``num_devices`` devices."""
  shape = {1: (1, 1), 2: (1, 2), 4: (2, 2), 8: (2, 4)}[num_devices]
  devices = np.array(jax.devices()[:num_devices]).reshape(shape)
  return jax.sharding.Mesh(devices, ('data', 'model'))


def param_specs(params):
  """Partition specs: kernels split both ways, vectors along 'model'."""

  def spec(path, leaf):
    name = jax.tree_util.keystr(path)
    if leaf.ndim == 2 and 'embedding' in name:
      return P('model', 'data')
    if leaf.ndim == 2:
      return P('data', 'model')
    return P('model')

  return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(params, mesh):
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s),
    param_specs(params),
    is_leaf=lambda x: isinstance(x, P),
  )


# Saving results --------------------------------------------------------------


def _bits(x) -> np.ndarray:
  """The array's raw bits, so that equality means bit-identical."""
  x = np.asarray(jax.device_get(x))
  return x.view(np.dtype(f'uint{8 * x.dtype.itemsize}'))


def tree_to_npz(tree, path: str) -> None:
  """Saves every leaf's bits and its float64 value, keyed by its path."""
  arrays = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = jax.tree_util.keystr(key_path)
    arrays['bits' + key] = _bits(leaf)
    arrays['value' + key] = np.asarray(jax.device_get(leaf)).astype(np.float64)
    arrays['dtype' + key] = np.array(str(leaf.dtype))
  np.savez(path, **arrays)


# The worker ------------------------------------------------------------------


def restore(ckpt: str, mu_dtype: str, mesh_devices: int | None):
  """Restores ``{'params', 'opt_state'}`` into a freshly built target."""
  import orbax.checkpoint as ocp

  params = init_params(seed=99)  # values are overwritten by the restore
  tx = make_tx(mu_dtype)
  if mesh_devices is None:
    abstract = jax.eval_shape(
      lambda: {'params': params, 'opt_state': tx.init(params)}
    )
  else:
    from optax_adam_mini import state_shardings

    mesh = make_mesh(mesh_devices)
    params = jax.device_put(params, param_shardings(params, mesh))
    abstract_params = jax.eval_shape(lambda: params)
    abstract_state = jax.eval_shape(tx.init, params)
    shardings = {
      'params': param_shardings(params, mesh),
      'opt_state': state_shardings(tx, params),
    }
    abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      {'params': abstract_params, 'opt_state': abstract_state},
      shardings,
    )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.abspath(ckpt), abstract)
  if mesh_devices is not None:
    # Every array lands where the state-sharding helper said it would.
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract)):
      assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (
        got.sharding,
        want.sharding,
      )
  return tx, restored['params'], restored['opt_state']


def main(argv) -> None:
  with open(argv[1]) as f:
    jobs = json.load(f)
  for job in jobs:
    tx, params, opt_state = restore(job['ckpt'], job['mu_dtype'], job['mesh'])
    params, opt_state = run(
      make_step(tx), params, opt_state, job['start'], job['steps']
    )
    tree_to_npz({'params': params, 'opt_state': opt_state}, job['out'])
    print(f'worker: wrote {job["out"]} on {len(jax.devices())} devices')


if __name__ == '__main__':
  main(sys.argv)
