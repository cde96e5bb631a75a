"""Every leaf of real libraries' param trees gets its Hessian block.

The trees come from fixtures that each library's own init wrote
(``make_fixtures.py``); the expected blocks from ``expected_<library>.py``,
written from the paper's rules and the library's layout. A leaf whose
expected spec is an error must make ``init`` raise a ``ValueError`` that
says so; every other leaf must get exactly its expected partition.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adam_mini import adam_mini
from tests.real_models import harness

FIXTURES = harness.fixture_names()


def _describe(spec) -> str:
  return spec.get('why') or str({k: v for k, v in spec.items() if k != 'why'})


@pytest.mark.parametrize('name', FIXTURES)
def test_every_leaf_gets_its_expected_block(name):
  fixture = harness.load(name)
  specs = harness.expectations(fixture)
  options = fixture.get('adam_mini_kwargs') or {}
  tree = harness.build_tree(fixture, dtype=jnp.float32)
  errors = [spec['error'] for spec in specs if 'error' in spec]
  if errors:
    with pytest.raises(ValueError) as raised:
      harness.library_labels(tree, **options)
    for message in errors:
      assert message in str(raised.value)
    return
  got = harness.library_labels(tree, **options)
  wrong = []
  for leaf, spec in zip(fixture['leaves'], specs):
    want = harness.expected_labels(leaf['shape'], spec)
    have = got[harness.fixture_path(leaf)]
    if not harness.same_partition(want, have):
      wrong.append(
        f'  {"/".join(str(k) for _, k in leaf["path"])} {leaf["shape"]}: '
        f'expected {_describe(spec)} ({len(np.unique(want))} blocks), '
        f'got {len(np.unique(have))} blocks'
      )
  assert not wrong, f'{len(wrong)} of {len(specs)} leaves wrong:\n' + '\n'.join(
    wrong
  )


@pytest.mark.parametrize('name', FIXTURES)
def test_adam_mini_trains_one_step_on_the_real_tree(name):
  fixture = harness.load(name)
  if any('error' in spec for spec in harness.expectations(fixture)):
    pytest.skip('the tree needs a partition from the user (expected error)')
  options = fixture.get('adam_mini_kwargs') or {}
  abstract = harness.build_tree(fixture)
  params = jax.tree.map(lambda x: jnp.full(x.shape, 0.5, x.dtype), abstract)
  tx = optax.chain(optax.clip_by_global_norm(1.0), adam_mini(0.1, **options))
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.1, x.dtype), params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  new_params, new_state = step(params, state, grads)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(new_params)):
    assert new.dtype == old.dtype
    assert bool(jnp.all(jnp.isfinite(new.astype(jnp.float32))))
    assert not np.array_equal(
      np.asarray(new, np.float32), np.asarray(old, np.float32)
    )
