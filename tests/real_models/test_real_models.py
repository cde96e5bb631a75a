"""Every leaf of real libraries' param trees gets its Hessian block.

The trees come from fixtures that each library's own init wrote
(``make_fixtures.py``); the expected blocks from ``expected_<library>.py``,
written from the paper's rules and the library's layout. A leaf whose
expected spec is an error must make ``init`` raise a ``ValueError`` that
says so; every other leaf must get exactly its expected partition.

The partition is read off the blocks ``init`` keeps in the state (no
compilation, so every fixture is checked), and every tree's ``init`` and
``update`` trace to a type-stable state. On the largest tree of each
library and tree form, a real update confirms that the state's blocks are
the ones the update uses, and one jitted step trains every leaf.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_adam_mini import adam_mini
from tests.real_models import harness

FIXTURES = harness.fixture_names()


def _one_per_form(names):
  """The largest fixture of each library and tree form (Linen, NNX, ...).

  Compiling a step costs seconds per tree on a CPU, too many for CI over
  every fixture; one tree per library and form, the one with the most
  leaves, exercises each way of handing params to an optimizer.
  """
  chosen = {}
  for name in names:
    library, model = name.split('/')
    form = model.rsplit('_', 1)[-1] if library == 'maxtext' else ''
    leaves = len(harness.load(name)['leaves'])
    best = chosen.get((library, form))
    if best is None or leaves > best[0]:
      chosen[(library, form)] = (leaves, name)
  return sorted(name for _, name in chosen.values())


def _describe(spec) -> str:
  return spec.get('why') or str({k: v for k, v in spec.items() if k != 'why'})


def _options(fixture):
  return fixture.get('adam_mini_kwargs') or {}


@pytest.mark.parametrize('name', FIXTURES)
def test_every_leaf_gets_its_expected_block(name):
  fixture = harness.load(name)
  specs = harness.expectations(fixture)
  tree = harness.build_tree(fixture, dtype=jnp.float32)
  errors = [spec['error'] for spec in specs if 'error' in spec]
  if errors:
    with pytest.raises(ValueError) as raised:
      harness.state_labels(tree, **_options(fixture))
    for message in errors:
      assert message in str(raised.value)
    return
  got = harness.state_labels(tree, **_options(fixture))
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


@pytest.mark.parametrize('name', _one_per_form(FIXTURES))
def test_the_update_uses_the_blocks_the_state_holds(name):
  fixture = harness.load(name)
  tree = harness.build_tree(fixture, dtype=jnp.float32)
  held = harness.state_labels(tree, **_options(fixture))
  used = harness.library_labels(tree, **_options(fixture))
  for leaf in fixture['leaves']:
    if not jnp.issubdtype(jnp.dtype(leaf['dtype']), jnp.inexact):
      continue  # no gradient reaches integer leaves
    path = harness.fixture_path(leaf)
    assert harness.same_partition(held[path], used[path]), path


@pytest.mark.parametrize('name', FIXTURES)
def test_init_and_update_trace_on_every_tree(name):
  fixture = harness.load(name)
  if any('error' in spec for spec in harness.expectations(fixture)):
    pytest.skip('the tree needs a partition from the user (expected error)')
  params = harness.build_tree(fixture)
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), adam_mini(0.1, **_options(fixture))
  )
  state = jax.eval_shape(tx.init, params)
  updates, new_state = jax.eval_shape(tx.update, params, state, params)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)

  def types(tree):
    return [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

  assert types(new_state) == types(state)
  assert types(updates) == types(params)


@pytest.mark.parametrize('name', _one_per_form(FIXTURES))
def test_adam_mini_trains_one_step_on_the_real_tree(name):
  fixture = harness.load(name)
  if any('error' in spec for spec in harness.expectations(fixture)):
    pytest.skip('the tree needs a partition from the user (expected error)')
  abstract = harness.build_tree(fixture)
  floating = [
    jnp.issubdtype(x.dtype, jnp.inexact) for x in jax.tree.leaves(abstract)
  ]
  # Built in NumPy and checked in NumPy: eager jnp ops would compile one
  # program per leaf shape (most of this test's time on the larger trees).
  params = jax.tree.map(
    lambda x: jnp.asarray(np.full(x.shape, 0.5, x.dtype)), abstract
  )
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), adam_mini(0.1, **_options(fixture))
  )
  state = tx.init(params)
  grads = jax.tree.map(
    lambda x: jnp.asarray(np.full(x.shape, 0.1, x.dtype)), params
  )

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  new_params, new_state = step(params, state, grads)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  pairs = zip(jax.tree.leaves(params), jax.tree.leaves(new_params), floating)
  for old, new, is_float in pairs:
    assert new.dtype == old.dtype
    if is_float:
      assert np.all(np.isfinite(np.asarray(new, np.float32)))
      assert not np.array_equal(
        np.asarray(new, np.float32), np.asarray(old, np.float32)
      )
