"""The fixture harness itself: tree rebuilding and block labels."""

import jax
import jax.numpy as jnp
import numpy as np

from optax_adam_mini import Block
from tests.real_models import harness


def _leaf(path, shape, wrappers=None):
  return {
    'path': [list(p) for p in path],
    'shape': list(shape),
    'dtype': 'float32',
    'wrappers': wrappers or [],
  }


def test_rebuilt_tree_has_the_fixture_key_paths():
  leaves = [
    _leaf([('dict', 'params'), ('dict', 'dense'), ('dict', 'kernel')], (4, 6)),
    _leaf([('attr', 'layers'), ('seq', 0), ('attr', 'weight')], (6, 4)),
    _leaf([('attr', 'layers'), ('seq', 1), ('attr', 'weight')], (6, 4)),
    _leaf(
      [('dict', 'w'), ('attr', 'value')],
      (3, 5),
      [{'type': 'flax.linen.LogicallyPartitioned', 'names': ['embed', 'mlp']}],
    ),
    _leaf(
      [('dict', 'n'), ('attr', 'value')],
      (5,),
      [{'type': 'flax.nnx.Param', 'metadata': {'out_sharding': ['embed']}}],
    ),
    _leaf(
      [('seq', 0), ('attr', 'value'), ('attr', 'data_array')],
      (2, 3),
      [
        {'type': 'penzai.core.variables.Parameter', 'label': 'blk/attn'},
        {
          'type': 'penzai.core.named_axes.NamedArray',
          'named_axes': {'heads': 2, 'projection': 3},
        },
      ],
    ),
  ]
  # A mixed root is not realistic; check each family on its own root.
  for group in ([0], [1, 2], [3, 4], [5]):
    fixture = {'leaves': [leaves[i] for i in group]}
    tree = harness.build_tree(fixture)
    paths = {
      harness.key_path(p): x.shape
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    want = {
      harness.fixture_path(leaf): tuple(leaf['shape'])
      for leaf in fixture['leaves']
    }
    assert paths == want


def test_stand_in_wrappers_carry_their_metadata():
  leaf = _leaf(
    [('seq', 0), ('attr', 'value'), ('attr', 'data_array')],
    (2, 3),
    [
      {'type': 'penzai.core.variables.Parameter', 'label': 'blk/attn'},
      {
        'type': 'penzai.core.named_axes.NamedArray',
        'named_axes': {'heads': 2, 'projection': 3},
      },
    ],
  )
  (param,) = harness.build_tree({'leaves': [leaf]})
  assert type(param).__name__ == 'Parameter' and param.label == 'blk/attn'
  assert type(param.value).__name__ == 'NamedArray'
  assert param.value.named_axes == {'heads': 2, 'projection': 3}
  mapped = jax.tree.map(lambda x: jnp.zeros(x.shape), param)
  assert mapped.value.named_axes == {'heads': 2, 'projection': 3}


def test_expected_labels_follow_the_spec():
  heads = harness.expected_labels(
    (4, 6), {'keep': [], 'split': {'axis': 1, 'heads': 3}}
  )
  assert len(np.unique(heads)) == 3
  assert (heads[:, :2] == heads[0, 0]).all() and heads[0, 2] != heads[0, 0]
  stacked = harness.expected_labels(
    (2, 4, 6), {'keep': [0], 'split': {'axis': 2, 'heads': 3}}
  )
  assert len(np.unique(stacked)) == 6
  neuron = harness.expected_labels((4, 6), {'keep': [1]})
  assert (neuron == neuron[0]).all() and len(np.unique(neuron)) == 6
  fused = harness.expected_labels(
    (4, 12),
    {
      'parts': {
        'axis': 1,
        'specs': [
          [4, {'keep': [], 'split': {'axis': 1, 'heads': 2}}],
          [8, {'keep': [1]}],
        ],
      }
    },
  )
  assert len(np.unique(fused)) == 2 + 8
  assert (
    len(np.unique(harness.expected_labels((3, 2), {'elementwise': True}))) == 6
  )
  assert len(np.unique(harness.expected_labels((3, 2), {'keep': []}))) == 1


def test_canonical_labels_ignore_numbering():
  a = np.array([[5, 5, 7], [9, 9, 7]])
  b = np.array([[0, 0, 1], [2, 2, 1]])
  assert harness.same_partition(a, b)
  assert not harness.same_partition(a, np.array([[0, 0, 1], [2, 2, 2]]))


def test_library_labels_observe_the_blocks_in_use():
  tree = {
    'w': jax.ShapeDtypeStruct((4, 6), jnp.float32),
    'e': jax.ShapeDtypeStruct((5, 3), jnp.float32),
  }
  partition = {'w': Block.heads(1, 2), 'e': Block.elementwise()}
  got = harness.library_labels(tree, partition=partition)
  assert harness.same_partition(
    got[(('dict', 'w'),)],
    harness.expected_labels(
      (4, 6), {'keep': [], 'split': {'axis': 1, 'heads': 3}}
    ),
  )
  assert harness.same_partition(
    got[(('dict', 'e'),)],
    harness.expected_labels((5, 3), {'elementwise': True}),
  )
  assert not harness.same_partition(
    got[(('dict', 'w'),)], harness.expected_labels((4, 6), {'keep': [1]})
  )
