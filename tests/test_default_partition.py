"""The default rules on real layouts, and every error the API promises."""

import warnings

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import linen as nn
from flax import nnx

from optax_adam_mini import (
  Block,
  Role,
  adam_mini,
  classify,
  default_partition,
  partition_report,
  scale_by_adam_mini,
)
from optax_adam_mini.partition import resolve


def _shapes(tree):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x, jnp.float32),
    tree,
    is_leaf=lambda x: isinstance(x, tuple),
  )


def _v_shapes(params, **options):
  state = jax.eval_shape(scale_by_adam_mini(**options).init, params)
  return jax.tree.map(lambda x: x.shape, state.v)


def llama(D=32, H=4, K=2, Dh=8, F=48, V=40, layers=2, stacked=False):
  """A Llama-style tree as Flax ports of Hugging Face models name it."""
  L = (layers,) if stacked else ()
  layer = {
    'self_attn': {
      'q_proj': {'kernel': L + (D, H * Dh)},
      'k_proj': {'kernel': L + (D, K * Dh)},
      'v_proj': {'kernel': L + (D, K * Dh)},
      'o_proj': {'kernel': L + (H * Dh, D)},
    },
    'mlp': {
      'gate_proj': {'kernel': L + (D, F)},
      'up_proj': {'kernel': L + (D, F)},
      'down_proj': {'kernel': L + (F, D)},
    },
    'input_layernorm': {'weight': L + (D,)},
    'post_attention_layernorm': {'weight': L + (D,)},
  }
  tree = {
    'model': {
      'embed_tokens': {'embedding': (V, D)},
      'layers': layer if stacked else {str(i): layer for i in range(layers)},
      'norm': {'weight': (D,)},
    },
    'lm_head': {'kernel': (D, V)},
  }
  return _shapes(tree)


def test_llama_gqa_blocks():
  v = _v_shapes(llama(), num_heads=4, num_kv_heads=2)
  layer = v['model']['layers']['0']
  assert layer['self_attn']['q_proj']['kernel'] == (1, 4, 1)  # per head
  assert layer['self_attn']['k_proj']['kernel'] == (1, 2, 1)  # per KV head
  assert layer['self_attn']['v_proj']['kernel'] == (1, 16)  # per neuron
  assert layer['self_attn']['o_proj']['kernel'] == (1, 32)
  assert layer['mlp']['gate_proj']['kernel'] == (1, 48)
  assert layer['mlp']['down_proj']['kernel'] == (1, 32)
  assert layer['input_layernorm']['weight'] == (1,)
  assert v['model']['embed_tokens']['embedding'] == (40, 1)  # per token
  assert v['lm_head']['kernel'] == (1, 40)  # per token
  assert v['model']['norm']['weight'] == (1,)


def test_gqa_key_heads_from_queries_alone():
  # With only num_heads, the key's head size comes from the queries.
  v = _v_shapes(llama(), num_heads=4)
  assert v['model']['layers']['0']['self_attn']['k_proj']['kernel'] == (1, 2, 1)
  v = _v_shapes(llama(), head_dim=8)
  assert v['model']['layers']['0']['self_attn']['q_proj']['kernel'] == (1, 4, 1)
  # Heads of 16 where D / H is 8: the queries' outputs (64) say so, not D.
  v = _v_shapes(llama(D=32, H=4, K=2, Dh=16), num_heads=4)
  attn = v['model']['layers']['0']['self_attn']
  assert attn['q_proj']['kernel'] == (1, 4, 1)
  assert attn['k_proj']['kernel'] == (1, 2, 1)


def test_head_dim_not_model_width_over_heads():
  # Gemma / Qwen3 style: 4 heads of 16 on a width of 32.
  params = llama(D=32, H=4, K=2, Dh=16)
  v = _v_shapes(params, num_heads=4, num_kv_heads=2, head_dim=16)
  attn = v['model']['layers']['0']['self_attn']
  assert attn['q_proj']['kernel'] == (1, 4, 1)
  assert attn['k_proj']['kernel'] == (1, 2, 1)
  v = _v_shapes(params, num_heads=4, num_kv_heads=2)
  assert v['model']['layers']['0']['self_attn']['q_proj']['kernel'] == (1, 4, 1)


def test_whole_value_blocks():
  v = _v_shapes(llama(), num_heads=4, num_kv_heads=2, value_blocks='whole')
  assert v['model']['layers']['0']['self_attn']['v_proj']['kernel'] == (1, 1)
  # Stacked: one v per layer, still.
  stacked = llama(stacked=True)
  v = _v_shapes(stacked, num_heads=4, num_kv_heads=2, value_blocks='whole')
  assert v['model']['layers']['self_attn']['v_proj']['kernel'] == (2, 1, 1)


@pytest.mark.parametrize('layers', [2, 4])
def test_stacked_layers_keep_their_own_blocks(layers):
  # H * Dh = D, so the stacked output projection (L, D, D) has the shape of
  # explicit heads (H, Dh, D) with H = L; with 4 layers L is the head count
  # too. Per the paper, it is one v per output neuron of each layer.
  L = layers
  v = _v_shapes(llama(layers=L, stacked=True), num_heads=4, num_kv_heads=2)
  layer = v['model']['layers']
  assert layer['self_attn']['q_proj']['kernel'] == (L, 1, 4, 1)
  assert layer['self_attn']['k_proj']['kernel'] == (L, 1, 2, 1)
  assert layer['self_attn']['v_proj']['kernel'] == (L, 1, 16)
  assert layer['self_attn']['o_proj']['kernel'] == (L, 1, 32)
  assert layer['mlp']['up_proj']['kernel'] == (L, 1, 48)
  assert layer['mlp']['down_proj']['kernel'] == (L, 1, 32)
  assert layer['input_layernorm']['weight'] == (L, 1)


def test_flattened_heads_need_a_head_count():
  with pytest.raises(ValueError, match=r'_proj/kernel.*Pass num_heads='):
    jax.eval_shape(scale_by_adam_mini().init, llama())


def test_heads_must_divide():
  with pytest.raises(ValueError, match=r'q_proj/kernel.*num_heads=5'):
    jax.eval_shape(scale_by_adam_mini(num_heads=5).init, llama())
  with pytest.raises(ValueError, match=r'k_proj/kernel.*num_kv_heads=3'):
    jax.eval_shape(
      scale_by_adam_mini(num_heads=4, num_kv_heads=3).init, llama()
    )
  with pytest.raises(ValueError, match=r'q_proj/kernel.*head_dim=16'):
    jax.eval_shape(scale_by_adam_mini(num_heads=4, head_dim=16).init, llama())


def gpt2(D=32, H=4, V=50, T=16, fused_first=False, layers=2):
  c_attn = (3 * D, D) if fused_first else (D, 3 * D)
  layer = {
    'ln_1': {'scale': (D,), 'bias': (D,)},
    'attn': {
      'c_attn': {'kernel': c_attn, 'bias': (3 * D,)},
      'c_proj': {'kernel': (D, D), 'bias': (D,)},
    },
    'ln_2': {'scale': (D,), 'bias': (D,)},
    'mlp': {
      'c_fc': {'kernel': (D, 4 * D), 'bias': (4 * D,)},
      'c_proj': {'kernel': (4 * D, D), 'bias': (D,)},
    },
  }
  return _shapes(
    {
      'wte': {'embedding': (V, D)},
      'wpe': {'embedding': (T, D)},
      'h': {str(i): layer for i in range(layers)},
      'ln_f': {'scale': (D,), 'bias': (D,)},
    }
  )


@pytest.mark.parametrize('fused_first', [False, True])
def test_gpt2_fused_qkv(fused_first):
  params = gpt2(fused_first=fused_first)
  blocks = default_partition(params, num_heads=4)
  rule = blocks['h']['0']['attn']['c_attn']['kernel']
  axis = 0 if fused_first else 1
  assert rule == Block.concat(
    axis,
    [
      (32, Block.heads(axis, 8)),
      (32, Block.heads(axis, 8)),
      (32, Block.along(axis)),
    ],
  )
  v = _v_shapes(params, num_heads=4)
  q, k, value = v['h']['0']['attn']['c_attn']['kernel']
  assert q == k == ((1, 4, 1) if not fused_first else (4, 1, 1))
  assert value == ((1, 32) if not fused_first else (32, 1))
  assert v['h']['0']['attn']['c_proj']['kernel'] == (1, 32)
  assert v['h']['0']['mlp']['c_fc']['kernel'] == (1, 128)
  assert v['h']['0']['mlp']['c_proj']['kernel'] == (1, 32)
  assert v['h']['0']['ln_1']['scale'] == (1,)
  assert v['h']['0']['ln_1']['bias'] == (32,)  # biases: plain Adam
  assert v['wte']['embedding'] == (50, 1)
  assert v['wpe']['embedding'] == (16, 1)
  roles = {
    'h/0/attn/c_proj/kernel': Role.ATTENTION_OUT,
    'h/0/mlp/c_proj/kernel': Role.MLP,
  }
  for path, role in roles.items():
    assert classify(tuple(path.split('/'))) is role


def test_gpt2_fused_needs_heads():
  with pytest.raises(ValueError, match=r'c_attn/kernel.*num_heads='):
    default_partition(gpt2())


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Embed(50, 32)(x)
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(y)
    x = x + y
    y = nn.RMSNorm()(x)
    y = nn.Dense(64)(y)
    return x + nn.Dense(32)(y)


def test_linen_multi_head_attention():
  params = jax.eval_shape(
    _LinenBlock().init, jax.random.PRNGKey(0), jnp.zeros((1, 5), jnp.int32)
  )
  v = _v_shapes(params)['params']
  attn = v['MultiHeadDotProductAttention_0']
  assert attn['query']['kernel'] == (1, 4, 1)  # (D, H, Dh): per head
  assert attn['key']['kernel'] == (1, 4, 1)
  assert attn['value']['kernel'] == (1, 4, 8)  # per output neuron
  assert attn['out']['kernel'] == (1, 1, 32)  # (H, Dh, D): per output neuron
  assert attn['query']['bias'] == (4, 8)  # plain Adam
  assert v['Embed_0']['embedding'] == (50, 1)
  assert v['LayerNorm_0']['scale'] == (1,)
  assert v['RMSNorm_0']['scale'] == (1,)
  assert v['Dense_0']['kernel'] == (1, 64)


class _NNXModel(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(50, 32, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=4, in_features=32, decode=False, rngs=rngs
    )
    self.norm = nnx.RMSNorm(32, rngs=rngs)
    self.mlp = nnx.Linear(32, 64, rngs=rngs)


def test_nnx_multi_head_attention_and_value_paths():
  model = _NNXModel(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  # At init NNX paths end in `.value`; the update's do not: both resolve alike.
  leaves, _ = resolve(default_partition, state)
  by_path = {'/'.join(x.path): x.block for x in leaves}
  assert by_path['attn/query/kernel'] == Block.along(1)
  assert by_path['attn/value/kernel'] == Block.along(1, 2)
  assert by_path['attn/out/kernel'] == Block.along(2)
  assert by_path['embed/embedding'] == Block.along(0)
  assert by_path['norm/scale'] == Block.whole()
  assert by_path['mlp/kernel'] == Block.along(1)

  optimizer = nnx.Optimizer(model, adam_mini(1e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss(model):
      x = model.embed(jnp.arange(6)[None])
      return jnp.mean(model.mlp(model.norm(model.attn(x))) ** 2)

    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  train_step(model, optimizer)
  after = nnx.state(model, nnx.Param)
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), before, after)
  assert all(jax.tree.leaves(changed))


def test_user_partitions_single_tree_prefix_and_callable():
  params = _shapes({'a': {'w': (4, 6), 'b': (6,)}, 'c': (3, 3)})
  v = _v_shapes(params, partition=Block.whole())
  assert v == {'a': {'w': (1, 1), 'b': (1,)}, 'c': (1, 1)}
  v = _v_shapes(
    params, partition={'a': Block.along(0), 'c': Block.elementwise()}
  )
  assert v == {'a': {'w': (4, 1), 'b': (6,)}, 'c': (3, 3)}

  def label(tree):
    return jax.tree.map(lambda x: Block.along(-1), tree)

  v = _v_shapes(params, partition=label)
  assert v == {'a': {'w': (1, 6), 'b': (6,)}, 'c': (1, 3)}


def test_partition_errors_name_the_leaf():
  params = _shapes({'a': {'w': (4, 6)}, 'c': (3, 3)})
  with pytest.raises(ValueError, match=r'leaf c \(shape \(3, 3\)\)'):
    jax.eval_shape(
      scale_by_adam_mini(partition={'a': Block.whole()}).init, params
    )
  with pytest.raises(TypeError, match=r'a/w'):
    jax.eval_shape(
      scale_by_adam_mini(
        partition={'a': {'w': 'whole'}, 'c': Block.whole()}
      ).init,
      params,
    )
  with pytest.raises(
    ValueError, match=r'a/w \(shape \(4, 6\)\).*axis 2 is out of range'
  ):
    jax.eval_shape(scale_by_adam_mini(partition=Block.along(2)).init, params)
  with pytest.raises(ValueError, match=r'a/w.*head_dim 4 does not divide'):
    jax.eval_shape(
      scale_by_adam_mini(
        partition={'a': Block.heads(1, 4), 'c': Block.whole()}
      ).init,
      params,
    )
  with pytest.raises(ValueError, match=r'repeat'):
    jax.eval_shape(
      scale_by_adam_mini(partition=Block.along(0, -2)).init, params
    )
  with pytest.raises(ValueError, match=r'part sizes'):
    jax.eval_shape(
      scale_by_adam_mini(
        partition=Block.concat(1, [(2, Block.whole()), (2, Block.whole())])
      ).init,
      _shapes({'w': (4, 6)}),
    )
  with pytest.raises(TypeError):
    Block.along('0')
  with pytest.raises(ValueError):
    Block.heads(0, 0)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    ({'learning_rate': -1.0}, 'learning_rate'),
    ({'learning_rate': 1e-3, 'b1': 1.0}, 'b1'),
    ({'learning_rate': 1e-3, 'b2': -0.1}, 'b2'),
    ({'learning_rate': 1e-3, 'eps': -1e-8}, 'eps'),
    ({'learning_rate': 1e-3, 'num_heads': 0}, 'num_heads'),
    ({'learning_rate': 1e-3, 'value_blocks': 'row'}, 'value_blocks'),
    (
      {'learning_rate': 1e-3, 'partition': Block.whole(), 'num_heads': 4},
      'num_heads',
    ),
  ],
)
def test_bad_hyperparameters_raise_at_once(kwargs, match):
  with pytest.raises(ValueError, match=match):
    adam_mini(**kwargs)


def test_schedules_and_arrays_are_accepted_as_hyperparameters():
  adam_mini(optax.constant_schedule(1e-3), b1=jnp.asarray(0.9))


def test_report_counts_bytes_and_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    report = partition_report(llama(), num_heads=4, num_kv_heads=2)
  assert report.roles[Role.QUERY].blocks == 2 * 4
  assert report.roles[Role.KEY].blocks == 2 * 2
  assert report.roles[Role.EMBEDDING].blocks == 40
  assert 0.5 < report.state_ratio < 0.52
  text = str(report)
  assert 'model/layers/0/self_attn/q_proj/kernel' in text
  assert 'Block.heads(1, 8)' in text
  assert 'of optax.adamw' in text

  # A transformer without a recognised MLP or output leaf warns.
  params = llama()
  for layer in params['model']['layers'].values():
    mlp = layer.pop('mlp')
    layer['mixer'] = {'w_in': mlp['up_proj'], 'w_out': mlp['down_proj']}
  params['proj_out'] = params.pop('lm_head')
  with pytest.warns(UserWarning, match='MLP'):
    report = partition_report(params, num_heads=4, num_kv_heads=2)
  assert any('output' in message for message in report.warnings)


def test_llama_7b_state_bytes_ratio():
  params = llama(
    D=4096, H=32, K=32, Dh=128, F=11008, V=32000, layers=32, stacked=True
  )
  report = partition_report(params, num_heads=32)
  assert report.state_ratio <= 0.5005
  report = partition_report(params, num_heads=32, mu_dtype=jnp.bfloat16)
  assert report.state_ratio <= 0.2505


def test_explicit_head_axes_with_gqa_and_qk_norm():
  # NNX/Linen-style kernels with heads as an axis of their own, 2 KV heads,
  # plus qk-norm scales, stacked over 3 layers.
  params = _shapes(
    {
      'layers': {
        'attn': {
          'query': {'kernel': (3, 32, 4, 8)},
          'key': {'kernel': (3, 32, 2, 8)},
          'value': {'kernel': (3, 32, 2, 8)},
          'out': {'kernel': (3, 4, 8, 32)},
          'q_norm': {'scale': (3, 8)},
          'k_norm': {'scale': (3, 8)},
        }
      }
    }
  )
  v = _v_shapes(params)['layers']['attn']
  assert v['query']['kernel'] == (3, 1, 4, 1)
  assert v['key']['kernel'] == (3, 1, 2, 1)
  assert v['value']['kernel'] == (3, 1, 2, 8)
  assert v['out']['kernel'] == (3, 1, 1, 32)
  assert v['q_norm']['scale'] == (3, 1)
  # Unstacked, with head counts given: (D, K, Dh) keys are recognised too.
  params = _shapes(
    {'attn': {'query': {'kernel': (32, 4, 8)}, 'key': {'kernel': (32, 2, 8)}}}
  )
  v = _v_shapes(params, num_heads=4, num_kv_heads=2)['attn']
  assert v['query']['kernel'] == (1, 4, 1)
  assert v['key']['kernel'] == (1, 2, 1)


@pytest.mark.parametrize(
  'counts',
  [
    {},
    {'num_heads': 4, 'num_kv_heads': 2},
    {'num_heads': 4},
    {'head_dim': 8},
  ],
  ids=['no counts', 'heads and kv heads', 'heads', 'head_dim'],
)
@pytest.mark.parametrize('with_width', [False, True], ids=['no width', 'width'])
def test_stacked_explicit_head_axes_with_and_without_head_counts(
  counts, with_width
):
  # Flax attention kernels stacked over L=3 layers, heads as an axis of their
  # own: (L, D, H, Dh) and (L, H, Dh, D). The paper's rule: one v per layer
  # and head for queries and keys, per layer and output neuron for values
  # and the output projection. Head counts must not turn the explicit head
  # axis into a flattened one (issue 15: rank 4 read as flattened).
  L, D, H, K, Dh = 3, 32, 4, 2, 8
  params = _shapes(
    {
      'layers': {
        'attn': {
          'query': {'kernel': (L, D, H, Dh)},
          'key': {'kernel': (L, D, K, Dh)},
          'value': {'kernel': (L, D, K, Dh)},
          'out': {'kernel': (L, H, Dh, D)},
        }
      },
      # An embedding table tells the model width D.
      **({'embed': {'embedding': (40, D)}} if with_width else {}),
    }
  )
  v = _v_shapes(params, **counts)['layers']['attn']
  assert v['query']['kernel'] == (L, 1, H, 1)
  assert v['key']['kernel'] == (L, 1, K, 1)
  assert v['value']['kernel'] == (L, 1, K, Dh)
  assert v['out']['kernel'] == (L, 1, 1, D)


class _ScannedAttention(nn.Module):
  """Flax's own attention scanned over 3 layers: kernels (L, D, H, Dh)."""

  @nn.compact
  def __call__(self, x):
    def layer(module, carry, _):
      attention = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)
      return attention(carry), None

    scan = nn.scan(
      layer,
      variable_axes={'params': 0},
      split_rngs={'params': True},
      length=3,
    )
    return scan(self, x, None)[0]


@pytest.mark.parametrize(
  'counts', [{}, {'num_heads': 4}], ids=['no counts', 'num_heads']
)
def test_scanned_linen_attention_with_and_without_head_counts(counts):
  # The shapes are Flax's own init's, not written by hand.
  params = jax.eval_shape(
    _ScannedAttention().init, jax.random.PRNGKey(0), jnp.zeros((1, 5, 32))
  )
  kernel = params['params']['MultiHeadDotProductAttention_0']['query']['kernel']
  assert kernel.shape == (3, 32, 4, 8)
  v = _v_shapes(params, **counts)['params']['MultiHeadDotProductAttention_0']
  assert v['query']['kernel'] == (3, 1, 4, 1)  # per layer and head
  assert v['key']['kernel'] == (3, 1, 4, 1)
  assert v['value']['kernel'] == (3, 1, 4, 8)  # per layer and output neuron
  assert v['out']['kernel'] == (3, 1, 1, 32)


def test_gpt2_conv1d_read_out_in_only_when_every_mlp_kernel_says_so():
  # Hugging Face's GPT-2 stores Conv1D kernels (out, in): c_fc (4D, D) and
  # mlp/c_proj (D, 4D). Here c_fc says (out, in) but mlp/c_proj (4D, D)
  # says (in, out): contradictory evidence keeps Flax's (in, out).
  D = 32
  tree = jax.tree.map(lambda x: x.shape, gpt2(D=D, layers=1))
  tree['h']['0']['mlp']['c_fc']['kernel'] = (4 * D, D)
  v = _v_shapes(_shapes(tree), num_heads=4)['h']['0']
  assert v['mlp']['c_fc']['kernel'] == (1, D)  # (in, out): per output
  assert v['attn']['c_proj']['kernel'] == (1, D)


def test_haiku_style_b_leaves_are_biases():
  # Haiku names a linear layer's params w and b: b is a bias, plain Adam
  # (the reference's rule), and the default mask does not decay it.
  params = _shapes({'mlp': {'linear': {'w': (4, 8), 'b': (8,)}}})
  assert classify(('mlp', 'linear', 'b')) is Role.BIAS
  assert _v_shapes(params)['mlp']['linear']['b'] == (8,)
