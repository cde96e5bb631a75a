"""Test session setup: 8 host CPU devices for the mesh tests, and numpy rank
promotion as an error.

The device flag must be set before jax initialises its backends, hence here.
Rank promotion (``(B, T, D) * (D,)`` broadcasting a lower-rank operand) is an
error, as in nanodo's tests: a silent broadcast hides a wrong axis.
"""

import os

if 'xla_force_host_platform_device_count' not in os.environ.get(
  'XLA_FLAGS', ''
):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8'
  ).strip()

import jax  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')
