"""The memory table of BENCHMARKS.md: Adam-mini's state against optax.adamw.

Exact byte counts from ``jax.eval_shape`` on full-size parameter trees (nothing
is allocated). Only ratios are asserted; no timings are tested anywhere.
"""

import pytest

from benchmarks import memory

# Llama trees have no biases: the extra over m is one float32 v per block.
# GPT-2 has biases, which keep one v per coordinate (plain Adam, as in the
# reference implementation), so its ratios sit slightly higher at small sizes.
CASES = [
  ('llama', '7B', 0.5005, 0.2505),
  ('llama', 'llama3-8B', 0.5005, 0.2505),
  ('llama', '13B', 0.5005, 0.2505),
  ('gpt2', '1.5B', 0.5006, 0.2506),
  ('gpt2', '124M', 0.5010, 0.2510),
]


@pytest.mark.parametrize('family,key,bound_f32,bound_bf16', CASES)
def test_state_ratio(family, key, bound_f32, bound_bf16):
  row = memory.measure(family, key)
  assert row['adam_mini_ratio'] <= bound_f32, row
  assert row['adam_mini_bf16_ratio'] <= bound_bf16, row
  # Adam-mini keeps m: it can never be below half of AdamW's (m, v) state.
  assert row['adam_mini_ratio'] > 0.5
  assert row['adam_mini_bf16_ratio'] > 0.25
  # The report and the optimizer agree on the state's size.
  assert row['report_state_bytes'] == row['adam_mini']
