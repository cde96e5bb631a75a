"""Multi-host: two CPU processes of 4 devices train on one 8-device mesh.

Both run `_support/multihost_worker.py` under ``jax.distributed.initialize`` with a
loopback coordinator; the result must match the one-process trajectory.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import jax
import numpy as np

from _support import REPO_ROOT, worker_env
from _support import sharded_lm as lm

STEPS = 3


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  out = tmp_path / 'result.npz'
  port = _free_port()
  worker = [sys.executable, '-m', '_support.multihost_worker']
  procs = [
    subprocess.Popen(
      worker + [str(i), str(port), str(out)],
      cwd=REPO_ROOT,
      env=worker_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = []
  try:
    for proc in procs:
      logs.append(proc.communicate(timeout=300)[0])
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]

  # The same steps in this process, on one device.
  trajectory = lm.one_device_trajectory(STEPS)
  losses = [float(loss) for _, _, loss in trajectory]

  result = np.load(out)
  np.testing.assert_allclose(result['losses'], losses, rtol=1e-5)
  params, state, _ = trajectory[-1]
  expected = jax.tree.leaves((params, state))
  for i, leaf in enumerate(expected):
    np.testing.assert_allclose(
      result[f'leaf{i}'], leaf, rtol=2e-4, atol=2e-5, err_msg=f'leaf {i}'
    )
