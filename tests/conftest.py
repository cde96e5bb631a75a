"""Test session setup: 8 host CPU devices for the mesh tests.

The flag must be set before jax initialises its backends, hence here.
"""

import os

if 'xla_force_host_platform_device_count' not in os.environ.get(
  'XLA_FLAGS', ''
):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8'
  ).strip()
