"""One process of the two-process CPU run of `test_multihost.py`.

Usage: ``python -m _support.multihost_worker PROCESS_ID PORT OUT.npz`` (with
``tests/`` on the path). Each process has 4 CPU devices; together they train
the tiny Llama of `sharded_lm` on one 2x4 ('fsdp', 'tp') mesh of all 8, and
process 0 writes the result.
"""

import os
import sys


def main(process_id: int, port: int, out: str, steps: int = 3):
  # Set up here, not at import: pytest's doctest collection imports this file.
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  import numpy as np

  try:  # cross-process collectives on the CPU
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except Exception:  # noqa: BLE001 - the default already is, in newer JAX
    pass
  jax.distributed.initialize(
    coordinator_address=f'127.0.0.1:{port}',
    num_processes=2,
    process_id=process_id,
    initialization_timeout=120,
  )
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding

  from _support import sharded_lm as lm
  from optax_adam_mini import state_shardings

  assert jax.device_count() == 8 and jax.local_device_count() == 4
  tx = lm.make_tx()
  mesh = lm.make_mesh('fsdp_tp', explicit=False)

  def place(x, spec):
    x = np.asarray(x)
    return jax.make_array_from_callback(
      x.shape, NamedSharding(mesh, spec), lambda index: x[index]
    )

  host = lm.init_params()
  params = jax.tree.map(place, host, lm.param_specs(host, 'fsdp_tp'))
  tokens = place(lm.make_batch(), lm.batch_spec('fsdp_tp'))
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  state_sh = state_shardings(tx, params)
  state = jax.jit(tx.init, out_shardings=state_sh)(params)
  step = lm.make_train_step(tx, param_sh, state_sh)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state, tokens)
    losses.append(float(loss.addressable_shards[0].data))  # replicated
  params, state = multihost_utils.process_allgather((params, state), tiled=True)
  leaves = jax.tree.leaves((params, state))
  if process_id == 0:
    np.savez(
      out,
      losses=np.asarray(losses),
      **{f'leaf{i}': x for i, x in enumerate(leaves)},
    )
  jax.distributed.shutdown()


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
