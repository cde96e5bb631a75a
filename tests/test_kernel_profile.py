"""The kernel profiler's parsing: HLO bytes per kernel, GPU events per op."""

import jax
import jax.numpy as jnp

from benchmarks import kernel_profile


def test_kernel_bytes_counts_operands_and_results_of_a_fusion():
  f = jax.jit(lambda x, y: jnp.sin(x) * y + 1.0)
  x = jax.ShapeDtypeStruct((1024, 256), jnp.float32)
  y = jax.ShapeDtypeStruct((1024, 256), jnp.bfloat16)
  text = f.lower(x, y).compile().as_text()
  fusions = {
    k: v
    for k, v in kernel_profile.kernel_bytes(text).items()
    if v['opcode'] == 'fusion'
  }
  assert len(fusions) == 1, fusions
  (info,) = fusions.values()
  # Reads x (4 bytes) and y (2), writes the float32 result (4).
  assert info['bytes'] == 1024 * 256 * (4 + 2 + 4)
  assert info['kind'] == 'kLoop'


def test_device_kernels_sum_gpu_events_by_hlo_op():
  trace = {
    'traceEvents': [
      {'ph': 'M', 'pid': 1, 'name': 'process_name',
       'args': {'name': '/device:GPU:0'}},
      {'ph': 'M', 'pid': 2, 'name': 'process_name',
       'args': {'name': '/host:CPU'}},
      {'ph': 'X', 'pid': 1, 'dur': 10.0, 'name': 'k',
       'args': {'hlo_op': 'fusion.1'}},
      {'ph': 'X', 'pid': 1, 'dur': 30.0, 'name': 'k',
       'args': {'hlo_op': 'fusion.1'}},
      {'ph': 'X', 'pid': 1, 'dur': 5.0, 'name': 'copy.2'},
      {'ph': 'X', 'pid': 2, 'dur': 99.0, 'name': 'host work'},
    ]
  }  # fmt: skip
  kernels = kernel_profile.device_kernels(trace)
  assert kernels == {
    'fusion.1': {'calls': 2, 'us': 40.0},
    'copy.2': {'calls': 1, 'us': 5.0},
  }
  rows = kernel_profile.summarize(
    kernels, {'fusion.1': {'bytes': 4e6, 'kind': 'kLoop'}}, steps=2,
    bandwidth_Bps=4e12,
  )  # fmt: skip
  assert rows[0]['kernel'] == 'fusion.1' and rows[0]['us_per_step'] == 20.0
  # 4 MB per call, one call per step in 20 us: 200 GB/s, 0.05 of 4 TB/s.
  assert abs(rows[0]['GBps'] - 200.0) < 1e-9
  assert abs(rows[0]['of_bandwidth'] - 0.05) < 1e-12
  assert rows[1]['bytes'] is None
