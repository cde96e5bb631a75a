"""What the tests share: models, workers and assertions (no tests here).

* ``sharded_lm``: the harness Llama (``benchmarks/scan_llama.py``) at a tiny
  size, with mesh layouts and a sharded train step;
* ``checkpoint_worker``: the checkpoint tests' problem (a one-layer harness
  Llama) and the worker that restores it in a fresh process;
* ``multihost_worker``: one process of the two-process run;
* ``trees``: assertions on whole pytrees.

pytest puts ``tests/`` on the path (``pythonpath`` in pyproject.toml), so the
tests import ``_support.<module>``; a worker runs in a fresh process as
``python -m _support.<worker>`` with :func:`worker_env`.
"""

from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
REPO_ROOT = os.path.abspath(REPO_ROOT)
TESTS_DIR = os.path.join(REPO_ROOT, 'tests')


def worker_env(num_devices: int | None = None) -> dict[str, str]:
  """The environment of a worker process: the CPU only, the repo and
  ``tests/`` importable, numpy rank promotion an error (as in the tests), and
  ``num_devices`` host CPU devices when given."""
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_NUMPY_RANK_PROMOTION'] = 'raise'
  path = [REPO_ROOT, TESTS_DIR] + env.get('PYTHONPATH', '').split(os.pathsep)
  env['PYTHONPATH'] = os.pathsep.join(p for p in path if p)
  if num_devices is not None:
    flags = [
      f
      for f in env.get('XLA_FLAGS', '').split()
      if 'xla_force_host_platform_device_count' not in f
    ]
    flags.append(f'--xla_force_host_platform_device_count={num_devices}')
    env['XLA_FLAGS'] = ' '.join(flags)
  return env
