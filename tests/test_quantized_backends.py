"""The backend comparison of a quantized ``m`` (``benchmarks/quantized_backends``).

On a GPU it compares that backend's codes with the CPU's; here both runs are
the CPU, so they must agree exactly, and the comparison must still see a
code that differs.
"""

import numpy as np

from benchmarks import quantized_backends


def test_cpu_against_cpu_agrees_and_int8_tracks_float32_m():
  out = quantized_backends.compare('tiny', ['int8'], steps=2)
  int8 = out['runs']['int8']
  assert int8['codes_differ_max'] == 0 and int8['float_rel_max'] == 0
  codes = [k for k, v in int8['per_leaf'].items() if 'differ' in v]
  assert any(k.endswith('codes') for k in codes), codes
  # Stochastic rounding at 127 levels a side: close to float32 m, not equal.
  err = int8['vs_float32_m']['cpu']
  assert 0 < err['relative_error'] < 0.05 and abs(err['bias']) < 1e-3
  assert 'int8' in quantized_backends.table(out)


def test_compare_trees_counts_differing_codes_and_float_error():
  a = {'codes': np.array([1, 2, 3, 4], np.int8), 'scales': np.array([2.0, 4.0])}
  b = {'codes': np.array([1, 2, 0, 4], np.int8), 'scales': np.array([2.0, 3.0])}
  got = quantized_backends.compare_trees(a, b)
  assert got['codes']['differ'] == 0.25
  assert got['scales']['rel'] == 0.25
