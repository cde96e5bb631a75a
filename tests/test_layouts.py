"""Layouts: axis names, library conventions, user statements, never silent.

Each expected ``v`` shape below is the paper's rule applied by hand to the
layout the test states (one ``v`` per head for queries and keys, per output
neuron for values, outputs and MLPs, per token for embeddings, per leaf for
norms; stacked layers and experts each their own), not read off the code.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx, serialization

from optax_adam_mini import (
  Block,
  Layout,
  Role,
  adam_mini,
  block_for,
  partition_report,
  scale_by_adam_mini,
)

D, L, H, K, DH, F, V = 16, 3, 4, 2, 6, 40, 50


def _sds(shape, names=None):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return x if names is None else nn.LogicallyPartitioned(x, names)


def _v_shapes(params, **options):
  state = jax.eval_shape(scale_by_adam_mini(**options).init, params)
  return jax.tree.map(
    lambda x: x.shape, state.v, is_leaf=lambda x: hasattr(x, 'shape')
  )


def _unbox(tree):
  return jax.tree.map(
    lambda x: x, nn.unbox(tree), is_leaf=lambda x: hasattr(x, 'shape')
  )


def maxtext_scanned(names=True):
  """A MaxText decoder scanned into axis 1, as its param_scan_axis=1 does."""

  def p(shape, axes):
    return _sds(shape, axes if names else None)

  layers = {
    'self_attention': {
      'query': {
        'kernel': p((D, L, H, DH), ('embed', 'layers', 'q_heads', 'kv'))
      },
      'key': {
        'kernel': p((D, L, K, DH), ('embed', 'layers', 'kv_heads', 'kv'))
      },
      'value': {
        'kernel': p((D, L, K, DH), ('embed', 'layers', 'kv_heads', 'kv'))
      },
      'out': {'kernel': p((H, L, DH, D), ('heads', 'layers', 'kv', 'embed'))},
    },
    'mlp': {
      'wi_0': {'kernel': p((D, L, F), ('embed', 'layers', 'mlp'))},
      'wi_1': {'kernel': p((D, L, F), ('embed', 'layers', 'mlp'))},
      'wo': {'kernel': p((F, L, D), ('mlp', 'layers', 'embed'))},
    },
    'pre_self_attention_layer_norm': {'scale': p((D, L), ('norm', 'layers'))},
    'post_self_attention_layer_norm': {'scale': p((D, L), ('norm', 'layers'))},
  }
  return {
    'params': {
      'token_embedder': {'embedding': p((V, D), ('vocab', 'embed'))},
      'decoder': {
        'layers': layers,
        'decoder_norm': {'scale': p((D,), ('norm',))},
        'logits_dense': {'kernel': p((D, V), ('embed', 'vocab'))},
      },
    }
  }


def _check_maxtext(v):
  layers = v['params']['decoder']['layers']
  attn = layers['self_attention']
  assert attn['query']['kernel'] == (1, L, H, 1)  # per layer and head
  assert attn['key']['kernel'] == (1, L, K, 1)
  assert attn['value']['kernel'] == (1, L, K, DH)  # per output neuron
  assert attn['out']['kernel'] == (1, L, 1, D)
  assert layers['mlp']['wi_0']['kernel'] == (1, L, F)
  assert layers['mlp']['wo']['kernel'] == (1, L, D)
  assert layers['pre_self_attention_layer_norm']['scale'] == (1, L)
  assert v['params']['token_embedder']['embedding'] == (V, 1)
  assert v['params']['decoder']['logits_dense']['kernel'] == (1, V)


def test_maxtext_scanned_layers_from_logical_axis_names():
  v = _v_shapes(maxtext_scanned())
  # v keeps the box with the kept axes' names.
  _check_maxtext(nn.unbox(v))


def test_maxtext_scanned_layers_without_names_from_the_norms():
  # Unboxed: the layer axis is the norm scales' non-width axis.
  _check_maxtext(_v_shapes(maxtext_scanned(names=False)))


def test_layer_axis_equal_to_width_is_an_error_naming_the_remedy():
  # Unboxed, 16 layers of width 16: the norms (16, 16) cannot tell where
  # the layers are, so no stacked leaf is guessed.
  params = {
    'decoder': {
      'layers': {
        'mlp': {'wi_0': {'kernel': _sds((D, D, F))}},
        'norm': {'scale': _sds((D, D))},
        'self_attention': {'query': {'kernel': _sds((D, D, H, DH))}},
      },
    },
    'token_embedder': {'embedding': _sds((V, D))},
  }
  with pytest.raises(
    ValueError, match=r"stacked layers.*layouts=\{'query/kernel': 'query: "
  ):
    _v_shapes(params)
  layouts = {
    'wi_0/kernel': 'mlp: in layers out',
    'norm/scale': 'norm: out layers',
    'query/kernel': 'query: in layers heads head_dim',
  }
  v = _v_shapes(params, layouts=layouts)['decoder']['layers']
  assert v['mlp']['wi_0']['kernel'] == (1, D, F)
  assert v['norm']['scale'] == (1, D)
  assert v['self_attention']['query']['kernel'] == (1, D, H, 1)


def test_moe_experts_each_keep_their_blocks():
  E = 5
  params = {
    'decoder': {
      'layers': {
        'MoeBlock_0': {
          'wi_0': _sds((E, L, D, F), ('exp', 'layers', 'embed_no_exp', 'mlp')),
          'wo': _sds((E, L, F, D), ('exp', 'layers', 'mlp', 'embed_no_exp')),
          'gate': {'kernel': _sds((D, L, E), ('embed', 'layers', None))},
        },
        'self_attention': {
          'query': {
            'kernel': _sds((D, L, H, DH), ('embed', 'layers', 'q_heads', 'kv'))
          }
        },
      }
    }
  }
  v = nn.unbox(_v_shapes(params))['decoder']['layers']['MoeBlock_0']
  assert v['wi_0'] == (E, L, 1, F)  # per expert, layer and output neuron
  assert v['wo'] == (E, L, 1, D)
  assert v['gate']['kernel'] == (1, L, E)  # router: per expert logit
  # The same without names: experts lead, layers at the norms' axis (none
  # here, so leading too).
  v = _v_shapes(_unbox(params))['decoder']['layers']['MoeBlock_0']
  assert v['wi_0'] == (E, L, 1, F)


def gemma_layer(qkv_fused=False, gemma3=False):
  attn = {
    '_query_norm': {'scale': _sds((DH,))},
    '_key_norm': {'scale': _sds((DH,))},
    'attn_vec_einsum': {'w': _sds((H, DH, D))},
  }
  if qkv_fused:
    attn['qkv_einsum'] = {'w': _sds((3, H, D, DH))}
  else:
    attn['q_einsum'] = {'w': _sds((H, D, DH))}
    attn['kv_einsum'] = {'w': _sds((2, K, D, DH))}
  gating = (2, F, D) if gemma3 else (2, D, F)
  return {
    'attn': attn,
    'mlp': {'gating_einsum': _sds(gating), 'linear': _sds((F, D))},
    'pre_attention_norm': {'scale': _sds((D,))},
    'post_ffw_norm': {'scale': _sds((D,))},
  }


@pytest.mark.parametrize('gemma3', [False, True])
def test_gemma_einsums(gemma3):
  params = {
    'embedder': {'input_embedding': _sds((V, D))},
    'layer_0': gemma_layer(gemma3=gemma3),
    'layer_1': gemma_layer(qkv_fused=True, gemma3=gemma3),
    'final_norm': {'scale': _sds((D,))},
  }
  v = _v_shapes(params)
  split, fused = v['layer_0'], v['layer_1']
  assert split['attn']['q_einsum']['w'] == (H, 1, 1)  # per head
  k, value = split['attn']['kv_einsum']['w']
  assert k == (1, K, 1, 1)  # per key head
  assert value == (1, K, 1, DH)  # per output neuron (head, coordinate)
  q, k, value = fused['attn']['qkv_einsum']['w']
  assert (q, k, value) == ((1, H, 1, 1), (1, H, 1, 1), (1, H, 1, DH))
  assert split['attn']['attn_vec_einsum']['w'] == (1, 1, D)
  gating = (2, F, 1) if gemma3 else (2, 1, F)  # gate and up: per neuron
  assert split['mlp']['gating_einsum'] == gating
  assert split['mlp']['linear'] == (1, D)
  assert split['attn']['_query_norm']['scale'] == (1,)
  assert v['embedder']['input_embedding'] == (V, 1)


def test_square_gating_is_an_error_naming_the_layout():
  params = {
    'embedder': {'input_embedding': _sds((V, D))},
    'layer_0': {'mlp': {'gating_einsum': _sds((2, D, D))}},
    'attn': {'q_einsum': {'w': _sds((H, D, DH))}},
  }
  with pytest.raises(
    ValueError, match=r"gating_einsum.*layouts=\{'mlp/gating_einsum'"
  ):
    _v_shapes(params)


def test_out_in_weights_of_equinox_and_torch_ports():
  # eqx.nn.Linear / MultiheadAttention: weight is (out, in).
  mha = {
    'query_proj': {'weight': _sds((H * DH, D)), 'bias': _sds((H * DH,))},
    'key_proj': {'weight': _sds((K * DH, D))},
    'value_proj': {'weight': _sds((K * DH, D))},
    'output_proj': {'weight': _sds((D, H * DH))},
  }
  params = {
    'embedding': {'weight': _sds((V, D))},
    'blocks': [{'attention': mha, 'mlp': {'fc1': {'weight': _sds((F, D))}}}],
    'norm': {'weight': _sds((D,))},
  }
  v = _v_shapes(params, num_heads=H, num_kv_heads=K)
  attn = v['blocks'][0]['attention']
  assert attn['query_proj']['weight'] == (H, 1, 1)  # heads on the out axis
  assert attn['key_proj']['weight'] == (K, 1, 1)
  assert attn['value_proj']['weight'] == (K * DH, 1)  # per output neuron
  assert attn['output_proj']['weight'] == (D, 1)
  assert v['blocks'][0]['mlp']['fc1']['weight'] == (F, 1)
  assert v['embedding']['weight'] == (V, 1)


def test_hugging_face_gpt2_conv1d_kernels_are_out_in():
  # transformers' FlaxConv1D stores (out, in); the example's GPT-2 (in, out).
  def gpt2(out_in):
    def k(n_in, n_out):
      return _sds((n_out, n_in) if out_in else (n_in, n_out))

    layer = {
      'attn': {
        'c_attn': {'kernel': k(D, 3 * D)},
        'c_proj': {'kernel': k(D, D)},
      },
      'mlp': {'c_fc': {'kernel': k(D, F)}, 'c_proj': {'kernel': k(F, D)}},
      'ln_1': {'scale': _sds((D,))},
    }
    return {'wte': {'embedding': _sds((V, D))}, 'h': {'0': layer}}

  for out_in in (False, True):
    v = _v_shapes(gpt2(out_in), num_heads=H)['h']['0']
    q, k, value = v['attn']['c_attn']['kernel']
    neuron = (lambda n: (n, 1)) if out_in else (lambda n: (1, n))
    assert q == k == ((H, 1, 1) if out_in else (1, H, 1))
    assert value == neuron(D)
    assert v['attn']['c_proj']['kernel'] == neuron(D)
    assert v['mlp']['c_fc']['kernel'] == neuron(F)
    assert v['mlp']['c_proj']['kernel'] == neuron(D)


def test_partial_head_counts_never_worse_than_none():
  # Explicit-head GQA kernels (D, K, Dh) with only num_heads given.
  params = {
    'embed': {'embedding': _sds((V, D))},
    'attn': {
      'query': {'kernel': _sds((D, H, DH))},
      'key': {'kernel': _sds((D, K, DH))},
      'out': {'kernel': _sds((H, DH, D))},
    },
  }
  none = _v_shapes(params)
  partial = _v_shapes(params, num_heads=H)
  assert none == partial
  assert partial['attn']['key']['kernel'] == (1, K, 1)


def test_fused_qkv_of_an_unknown_layout_names_the_override():
  params = {
    'embed': {'embedding': _sds((V, D))},
    'attn': {'qkv_proj': {'kernel': _sds((D, 5 * H * DH))}},
  }
  with pytest.raises(ValueError, match=r'layouts=|partition'):
    _v_shapes(params, num_heads=H, head_dim=DH)


def test_user_layouts_in_one_line():
  params = {
    'embed': {'embedding': _sds((V, D))},
    'blk': {
      'attn': {'wqkv_thing': _sds((D, L, H, DH))},
      'ffw': {'up': _sds((F, D)), 'down': _sds((D, F))},
    },
  }
  with pytest.warns(UserWarning, match='not recognised'):
    _v_shapes(params)
  layouts = {
    'attn/wqkv_thing': 'query: in layers heads head_dim',
    'ffw/up': 'mlp: out in',
    'ffw/down': Block.along(0),
  }
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    v = _v_shapes(params, layouts=layouts)
  assert v['blk']['attn']['wqkv_thing'] == (1, L, H, 1)
  assert v['blk']['ffw']['up'] == (F, 1)
  assert v['blk']['ffw']['down'] == (D, 1)


def test_strict_turns_unrecognised_leaves_into_errors():
  params = {
    'attn': {'query': {'kernel': _sds((D, H, DH))}},
    'mystery': {'w_in': _sds((D, F))},
  }
  with pytest.raises(ValueError, match=r'mystery/w_in.*layouts='):
    adam_mini(1e-3, strict=True).init(params)


def test_layout_strings_and_rules():
  layout = Layout.parse('key: layers in heads head_dim')
  assert (
    layout.role is Role.KEY and str(layout) == 'key: layers in heads head_dim'
  )
  assert block_for(layout, (L, D, K, DH)) == Block.along(0, 2)
  value = Layout.parse('value: in heads head_dim')
  assert block_for(value, (D, K, DH)) == Block.along(1, 2)
  assert block_for(value, (D, K, DH), value_blocks='whole') == Block.whole()
  with pytest.raises(ValueError, match='unknown axis kind'):
    Layout.parse('mlp: in outt')
  with pytest.raises(ValueError, match='unknown role'):
    Layout.parse('feedforward: in out')
  with pytest.raises(ValueError, match='num_heads'):
    block_for(Layout.parse('query: in out'), (D, H * DH))


def test_report_shows_the_detected_layout():
  report = partition_report(maxtext_scanned())
  by_path = {leaf.path: leaf for leaf in report.leaves}
  query = by_path['params/decoder/layers/self_attention/query/kernel']
  assert str(query.layout) == 'query: in layers heads head_dim'
  assert query.source == 'axis names (flax logical)'
  assert 'query: in layers heads head_dim' in str(report)


class _Weights(nnx.Module):
  def __init__(self, **leaves):
    for name, (value, names) in leaves.items():
      # Logical names, resolved to mesh axes only when sharded (not here).
      setattr(
        self,
        name,
        nnx.Param(value, out_sharding=names, eager_sharding=False),
      )


class _Annotated(nnx.Module):
  """An NNX model whose Variables carry logical names (scanned into axis 1)."""

  def __init__(self):
    self.norm = _Weights(scale=(jnp.ones((D, L)), ('norm', 'layers')))
    self.up_proj = _Weights(
      kernel=(jnp.ones((D, L, F)), ('embed', 'layers', 'mlp'))
    )


def test_blocks_decided_at_init_survive_updates_without_metadata():
  # nnx.Optimizer gives init Variables (with names) and update bare arrays;
  # bare, these shapes would say nothing of the layer axis at position 1.
  model = _Annotated()
  optimizer = nnx.Optimizer(model, adam_mini(1e-3), wrt=nnx.Param)
  v = optimizer.opt_state[0].v
  assert v['norm']['scale'].shape == (1, L)  # per layer, from the names
  assert v['up_proj']['kernel'].shape == (1, L, F)

  @nnx.jit
  def step(model, optimizer):
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)

  step(model, optimizer)
  v = optimizer.opt_state[0].v
  assert v['norm']['scale'].shape == (1, L)
  assert v['up_proj']['kernel'].shape == (1, L, F)
  assert int(optimizer.opt_state[0].count[...]) == 1


def test_update_on_another_tree_is_a_clear_error():
  params = {'mlp': {'kernel': jnp.zeros((4, 6))}}
  tx = scale_by_adam_mini()
  state = tx.init(params)
  with pytest.raises(ValueError, match='mlp/kernel has shape'):
    tx.update({'mlp': {'kernel': jnp.zeros((6, 4))}}, state)
  with pytest.raises(ValueError, match='2 leaves'):
    tx.update({'a': jnp.zeros(3), 'b': jnp.zeros(3)}, state)


def test_state_with_blocks_saves_through_flax_serialization():
  params = {'mlp': {'kernel': jnp.ones((4, 6))}}
  tx = adam_mini(1e-3)
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  restored = serialization.from_bytes(
    tx.init(params), serialization.to_bytes(state)
  )
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_adamw_signature_drop_in():
  params = {'mlp': {'kernel': jnp.ones((4, 6)), 'bias': jnp.ones(6)}}
  mask = {'mlp': {'kernel': True, 'bias': False}}
  # adamw's positional order: lr, b1, b2, eps, eps_root, mu_dtype, wd, mask.
  tx = adam_mini(1e-3, 0.9, 0.95, 1e-8, 0.0, None, 0.1, mask)
  ref = adam_mini(1e-3, b1=0.9, b2=0.95, weight_decay=0.1, mask=mask)
  grads = jax.tree.map(jnp.ones_like, params)
  u1, _ = tx.update(grads, tx.init(params), params)
  u2, _ = ref.update(grads, ref.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, u1, u2)
  with pytest.warns(DeprecationWarning, match='mask='):
    adam_mini(1e-3, weight_decay_mask=mask)
  with pytest.raises(ValueError, match='mask'):
    adam_mini(1e-3, mask=mask, weight_decay_mask=mask)


@pytest.mark.parametrize(
  'kwargs, error, match',
  [
    ({'learning_rate': 'fast'}, TypeError, 'learning_rate'),
    ({'learning_rate': 1e-3, 'b1': '0.9'}, TypeError, 'b1'),
    ({'learning_rate': 1e-3, 'eps': None}, TypeError, 'eps'),
    ({'learning_rate': 1e-3, 'weight_decay': -0.1}, ValueError, 'weight_decay'),
    ({'learning_rate': 1e-3, 'mu_dtype': jnp.int16}, ValueError, 'mu_dtype'),
    ({'learning_rate': 1e-3, 'mu_dtype': 'nope'}, TypeError, 'mu_dtype'),
    ({'learning_rate': 1e-3, 'num_heads': 2.0}, ValueError, 'num_heads'),
    ({'learning_rate': 1e-3, 'strict': 'yes'}, TypeError, 'strict'),
    ({'learning_rate': 1e-3, 'layouts': ['q']}, TypeError, 'layouts'),
    ({'learning_rate': 1e-3, 'layouts': {'q': 'query in'}}, ValueError, 'role'),
    # Options of the default partition, with a partition of one's own.
    (
      {'learning_rate': 1e-3, 'partition': Block.whole(), 'num_heads': 4},
      ValueError,
      'num_heads',
    ),
    (
      {
        'learning_rate': 1e-3,
        'partition': Block.whole(),
        'value_blocks': 'whole',
      },
      ValueError,
      'value_blocks',
    ),
    (
      {'learning_rate': 1e-3, 'partition': Block.whole(), 'strict': True},
      ValueError,
      'strict',
    ),
  ],
)
def test_every_argument_is_checked_at_construction(kwargs, error, match):
  with pytest.raises(error, match=match):
    adam_mini(**kwargs)


def test_optax_wrappers_keep_the_static_blocks():
  params = {'mlp': {'kernel': jnp.ones((4, 6))}}
  for tx in (
    optax.MultiSteps(adam_mini(1e-3), every_k_schedule=2),
    optax.inject_hyperparams(adam_mini)(learning_rate=1e-3),
  ):
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_fused_parts_beside_a_heads_axis_are_head_dim_by_default():
  # Layout's documented default part_kind: beside a heads axis the parts
  # axis is head_dim inside each part. A dense part keeps layers and out,
  # none of in, heads, head_dim: one v (read as out: one per coordinate).
  layout = Layout(
    Role.FUSED_QKV,
    ('in', 'heads', 'parts'),
    parts=((Role.KEY, 2), (Role.DENSE, 3)),
  )
  block = block_for(layout, (8, 4, 5))
  assert block == Block.concat(2, [(2, Block.along(1)), (3, Block.along())])


class _PenzaiNamedArray:
  """Stands in for penzai's ``pz.nx.NamedArray``: ``data_array`` holds the
  positional axes first and the named ones last (penzai's documented
  layout), ``named_axes`` the names of the trailing axes in order."""

  def __init__(self, data_array, named_axes):
    self.data_array, self.named_axes = data_array, named_axes


jax.tree_util.register_pytree_node(
  _PenzaiNamedArray,
  lambda x: ((x.data_array,), tuple(x.named_axes.items())),
  lambda named, children: _PenzaiNamedArray(children[0], dict(named)),
)
_PenzaiNamedArray.__name__ = 'NamedArray'


def test_penzai_named_axes_are_the_trailing_ones():
  from optax_adam_mini.annotations import leaf_infos

  leaf = _PenzaiNamedArray(
    jax.ShapeDtypeStruct((3, 8, 16), jnp.float32),
    {'embedding': 8, 'neurons': 16},
  )
  (info,) = leaf_infos({'w': leaf})
  assert info.axis_names == (None, 'embedding', 'neurons')
  assert (info.names_source, info.shape) == ('penzai', (3, 8, 16))
