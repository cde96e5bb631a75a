"""The rejected update-step formulations still plug into the library.

``benchmarks/update_step_variants.py`` swaps private functions of
``optax_adam_mini.transform`` for other formulations of the same math and
times them on a GPU. Here, on the CPU and the tiny harness Llama (one subtree
per layer, as those runs hold it), each variant must be the function the
library calls when the step is traced, and must give the library's step to
float32 round-off (a variant that quantizes other groups, to within the
int8 error); then the benchmark's driver runs one variant end to end.
A renamed private fails here rather than on a GPU.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_adam_mini
from _support.trees import assert_trees_close
from benchmarks import scan_llama, update_step_variants
from benchmarks.update_step_variants import OTHER_GROUPS, VARIANTS, patched

CONFIG = scan_llama.LLAMA['tiny'].with_layers(1)
PATCHED = [(label, opt, patches) for label, opt, patches in VARIANTS if patches]
SAME_NUMERICS = [v for v in PATCHED if v[0] not in OTHER_GROUPS]


@functools.cache
def _params_and_grads():
  """The harness tree's params and gradients, drawn with numpy (no compile)."""
  shapes = scan_llama.llama_shapes(CONFIG, stacked=False)
  rng = np.random.default_rng(0)

  def draw(scale):
    return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype),
      shapes,
    )

  return draw(0.02), draw(1e-3)


def _three_steps(opt):
  """Params and state after three steps of ``opt`` with fixed gradients."""
  tx = scan_llama.make_tx(
    opt, 1e-3, num_heads=CONFIG.n_heads, num_kv_heads=CONFIG.n_kv_heads
  )
  params, grads = _params_and_grads()

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  return params, state


@functools.cache
def _library_steps(opt):
  return _three_steps(opt)


@pytest.mark.parametrize(
  'label,opt,patches', SAME_NUMERICS, ids=[v[0] for v in SAME_NUMERICS]
)
def test_variant_replaces_the_library_step_and_agrees(label, opt, patches):
  called = []

  def recording(name, fn):
    def wrapper(*args, **kwargs):
      called.append(name)
      return fn(*args, **kwargs)

    return wrapper

  with patched({name: recording(name, fn) for name, fn in patches.items()}):
    got = _three_steps(opt)
  assert set(called) == set(patches), f'{label}: the library never called it'
  expected = _library_steps(opt)
  assert_trees_close(got, expected, rtol=1e-5, atol=1e-8)


def test_last_axis_groups_move_the_groups_and_keep_the_int8_error():
  (patches,) = [p for label, _, p in VARIANTS if label == OTHER_GROUPS[0]]
  shapes = scan_llama.llama_shapes(CONFIG, stacked=True)
  options = dict(
    num_heads=CONFIG.n_heads, num_kv_heads=CONFIG.n_kv_heads, mu_dtype=jnp.int8
  )
  with patched(patches):
    report = optax_adam_mini.partition_report(shapes, **options)
    got = _three_steps('adam_mini_int8')
  mlp = [x for x in report.leaves if x.path.endswith('up_proj/kernel')][0]
  assert mlp.mu.endswith(f'on axis {len(mlp.shape) - 1}'), mlp.mu
  # Against float32 m, the variant's params err by as much as the
  # library's int8 groups do (at most twice), not more.
  exact = _library_steps('adam_mini')[0]
  library = _library_steps('adam_mini_int8')[0]

  def error(params):
    diffs = jax.tree.map(lambda a, b: jnp.abs(a - b).max(), params, exact)
    return max(float(d) for d in jax.tree.leaves(diffs))

  assert 0 < error(got[0]) <= 2 * error(library) + 1e-9


def test_patched_restores_the_library_and_rejects_unknown_names():
  from optax_adam_mini import quantize, transform

  def owned(name):
    module, _, attr = name.rpartition('.')
    return getattr(quantize if module == 'quantize' else transform, attr)

  library = {name: owned(name) for _, _, p in PATCHED for name in p}
  assert any(name.startswith('quantize.') for name in library)
  every = {name: fn for _, _, p in PATCHED for name, fn in p.items()}
  with pytest.raises(RuntimeError), patched(every):
    raise RuntimeError('the library comes back even on an error')
  assert {name: owned(name) for name in library} == library
  with pytest.raises(AttributeError, match='_update_leaf_renamed'):
    with patched({'_update_leaf_renamed': lambda *args: None}):
      pass


def test_driver_writes_its_table(tmp_path, monkeypatch):
  label = 'adam_mini_folded_v'
  monkeypatch.setitem(scan_llama.LLAMA, 'tiny-1', CONFIG)
  # The driver is under test, not the init: draw on the host, which saves
  # compiling the random kernels (seconds on a CPU).
  init = scan_llama.init_from_shapes
  monkeypatch.setattr(
    scan_llama,
    'init_from_shapes',
    lambda shapes, key, std=0.02: init(shapes, np.random.default_rng(0), std),
  )
  out = update_step_variants.compare_variants(
    ['tiny-1'], [label], reps=1, stacked=True, out_dir=str(tmp_path)
  )
  saved = json.loads((tmp_path / 'update_step_variants.json').read_text())
  row = saved['rows']['tiny-1']
  assert set(row) == {'params', label}
  assert row[label]['finite'] and row[label]['median_s'] > 0
  assert row[label]['hlo']['fusions'] > 0
  assert row[label]['median_s'] == out['rows']['tiny-1'][label]['median_s']
  assert label in update_step_variants.table(out)
