"""``block_rules='slim'``: SlimAdam's rules by layer type, on real trees.

SlimAdam (Kalra et al., arXiv 2503.01843, its GPT-2 rules from the SNR of
Adam's ``v``) averages queries and keys over fan-in (one ``v`` per output
neuron), values, attention outputs and MLPs over fan-out (one per input
neuron), embeddings and the LM head over the model width (one per token),
and never compresses norm scales. The expected blocks below are written from
those rules and each library's own axis layout (the ``expected_<library>``
files in ``tests/real_models`` cite the lines), never from the code under
test; the trees are the fixtures the libraries' own inits wrote.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_adam_mini
from optax_adam_mini import adam_mini, default_partition, partition_report
from tests.real_models import harness

ELEMENTWISE = {'elementwise': True}


def keep(*axes):
  return {'keep': list(axes)}


def parts(axis, *specs):
  return {'parts': {'axis': axis, 'specs': [list(s) for s in specs]}}


# Per fixture: (path regex, expected spec). Shapes in the comments.
EXPECTED = {
  # Hugging Face Flax Llama: kernels (in, out).
  'transformers/llama': [
    (r'embed_tokens/embedding$', keep(0)),  # (V, D): per token
    (r'lm_head/kernel$', keep(1)),  # (D, V): per token
    (r'(q_proj|k_proj)/kernel$', keep(1)),  # (D, H*Dh): per output neuron
    (r'v_proj/kernel$', keep(0)),  # (D, K*Dh): per input neuron
    (r'o_proj/kernel$', keep(0)),  # (H*Dh, D): per input neuron
    (r'(gate_proj|up_proj|down_proj)/kernel$', keep(0)),  # per input neuron
    (r'(layernorm|norm)/weight$', ELEMENTWISE),
  ],
  # gemma (gm.nn, Gemma 2): einsums with explicit heads.
  'gemma/gemma2_gqa': [
    (r'input_embedding$', keep(0)),  # (V, D), tied
    (r'q_einsum/w$', keep(0, 2)),  # (H, D, Dh): per (head, coordinate)
    # (2, K, D, Dh): key per output (K, Dh) neuron, value per input (D)
    (r'kv_einsum/w$', parts(0, (1, keep(0, 1, 3)), (1, keep(0, 2)))),
    (r'attn_vec_einsum/w$', keep(0, 1)),  # (H, Dh, D): per input (H, Dh)
    (r'gating_einsum$', keep(0, 1)),  # (2, D, F): gate and up, per input D
    (r'mlp/linear$', keep(0)),  # (F, D): per input F
    (r'scale$', ELEMENTWISE),
  ],
  # MaxText, Linen, layers scanned into axis 1.
  'maxtext/llama2_scanned_linen': [
    (r'token_embedder/embedding/value$', keep(0)),  # (V, D)
    (r'logits_dense/kernel/value$', keep(1)),  # (D, V)
    (r'(query|key)/kernel/value$', keep(1, 2, 3)),  # (D, L, H, Dh)
    (r'value/kernel/value$', keep(0, 1)),  # (D, L, K, Dh): per (input, layer)
    (r'out/kernel/value$', keep(0, 1, 2)),  # (H, L, Dh, D)
    (r'mlp/wi_\d/kernel/value$', keep(0, 1)),  # (D, L, F)
    (r'mlp/wo/kernel/value$', keep(0, 1)),  # (F, L, D)
    (r'scale/value$', ELEMENTWISE),  # (D, L) and (D,)
  ],
  # Equinox, layers scanned into axis 0: eqx.nn.Linear weights (out, in).
  'equinox/decoder_scanned': [
    (r'(embedding|unembed)/weight$', keep(0)),  # (V, D): per token
    (r'(query_proj|key_proj)/weight$', keep(0, 1)),  # (L, H*Dh, D)
    (r'(value_proj|output_proj)/weight$', keep(0, 2)),  # (L, out, in)
    (r'mlp/layers/\d+/weight$', keep(0, 2)),  # (L, out, in)
    (r'norm/(weight|bias)$', ELEMENTWISE),
    (r'bias$', ELEMENTWISE),
  ],
  # Levanter (haliax named axes), Stacked layers, Linear out_first.
  'levanter/llama': [
    (r'(token_embeddings|lm_head)/weight/0$', keep(0)),  # (V, D)
    (r'q_proj/weight/0$', keep(0, 1, 2, 3)),  # (L, KV, QPG, Dh, D)
    (r'k_proj/weight/0$', keep(0, 1, 2)),  # (L, KV, Dh, D)
    (r'v_proj/weight/0$', keep(0, 3)),  # (L, KV, Dh, D): per input
    (r'o_proj/weight/0$', keep(0, 2, 3)),  # (L, D, H, Dh): per input (H, Dh)
    (r'(gate_proj|up_proj|down_proj)/weight/0$', keep(0, 2)),  # (L, out, in)
    (r'(layernorm|norm)/weight/0$', ELEMENTWISE),
  ],
  # Hugging Face Flax GPT-2: FlaxConv1D kernels (out, in), q|k|v fused.
  'transformers/gpt2': [
    (r'(wte|wpe)/embedding$', keep(0)),  # (V, D), (positions, D)
    # (3D, D): q and k per output neuron, v per input neuron
    (r'c_attn/kernel$', parts(0, (32, keep(0)), (32, keep(0)), (32, keep(1)))),
    (r'(c_proj|c_fc)/kernel$', keep(1)),  # (out, in): per input neuron
    (r'(ln_\d|ln_f)/(scale|bias)$', ELEMENTWISE),
    (r'bias$', ELEMENTWISE),  # biases stay plain Adam
  ],
}


def _spec(path: str, table):
  for pattern, spec in table:
    if re.search(pattern, path):
      return spec
  raise AssertionError(f'no expectation for {path}')


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_slim_rules_give_slimadam_blocks_on_real_trees(name):
  fixture = harness.load(name)
  tree = harness.build_tree(fixture, dtype=jnp.float32)
  options = dict(fixture.get('adam_mini_kwargs') or {}, block_rules='slim')
  got = harness.state_labels(tree, **options)
  wrong = []
  for leaf in fixture['leaves']:
    path = '/'.join(str(k) for _, k in leaf['path'])
    want = harness.expected_labels(leaf['shape'], _spec(path, EXPECTED[name]))
    have = got[harness.fixture_path(leaf)]
    if not harness.same_partition(want, have):
      wrong.append(
        f'{path} {leaf["shape"]}: {len(np.unique(want))} blocks expected, '
        f'{len(np.unique(have))} got'
      )
  assert not wrong, '\n'.join(wrong)


_CHANGED_ROLES = {
  optax_adam_mini.Role.QUERY,
  optax_adam_mini.Role.KEY,
  optax_adam_mini.Role.VALUE,
  optax_adam_mini.Role.ATTENTION_OUT,
  optax_adam_mini.Role.MLP,
  optax_adam_mini.Role.FUSED_QKV,
  optax_adam_mini.Role.NORM,
}


@pytest.mark.parametrize('name', harness.fixture_names())
def test_slim_rules_resolve_on_every_real_tree(name):
  # Wherever the reference's rules give a tree its blocks, so do SlimAdam's:
  # norm scales become plain Adam, every role the rules leave alone keeps
  # the reference's block.
  fixture = harness.load(name)
  if any('error' in spec for spec in harness.expectations(fixture)):
    pytest.skip('the tree needs a partition from the user (expected error)')
  tree = harness.build_tree(fixture, dtype=jnp.float32)
  options = fixture.get('adam_mini_kwargs') or {}
  reference, _ = optax_adam_mini.describe(tree, **options)
  slim, _ = optax_adam_mini.describe(tree, block_rules='slim', **options)
  for ref, new in zip(reference, slim):
    assert ref.role == new.role and ref.layout == new.layout
    if ref.role is optax_adam_mini.Role.NORM and ref.layout is not None:
      assert new.block == optax_adam_mini.Block.elementwise(), new.path
    elif ref.role not in _CHANGED_ROLES or ref.layout is None:
      assert new.block == ref.block, new.path


def test_interleaved_qkv_slices_follow_the_slim_rules():
  # GPT-NeoX's query_key_value: (D, H * 3 * Dh), each head's q|k|v slices
  # side by side (expected_transformers.py cites modeling_flax_gpt_neox).
  heads, dim, width = 2, 4, 8
  params = {
    'attention': {'query_key_value': {'kernel': jnp.zeros((width, 24))}}
  }
  block = default_partition(params, num_heads=heads, block_rules='slim')
  labels = harness.plan_labels(
    optax_adam_mini.block.bind(
      block['attention']['query_key_value']['kernel'], (width, 24)
    )
  )
  per_output = keep(1)
  per_input = keep(0)
  spec = parts(1, *[(dim, s) for s in (per_output, per_output, per_input)] * 2)
  assert harness.same_partition(
    harness.expected_labels((width, 24), spec), labels
  )


def test_slim_state_stays_reduced_on_llama2_7b():
  memory = pytest.importorskip('benchmarks.memory')
  params, heads, kv = memory.model_tree('llama', '7B')
  adamw = memory.state_bytes(optax.adamw(1e-3), params)
  ratios = {}
  for rules in ('reference', 'slim'):
    tx = adam_mini(1e-3, num_heads=heads, num_kv_heads=kv, block_rules=rules)
    ratios[rules] = memory.state_bytes(tx, params) / adamw
  print(f'Llama-2-7B state / AdamW: {ratios}')
  # m is half of AdamW's state; v one float per neuron, not per parameter.
  assert 0.5 < ratios['reference'] < ratios['slim'] <= 0.501


def test_slim_rules_train_and_report():
  fixture = harness.load('transformers/llama')
  abstract = harness.build_tree(fixture, dtype=jnp.float32)
  params = jax.tree.map(lambda x: jnp.full(x.shape, 0.1, x.dtype), abstract)
  options = dict(fixture['adam_mini_kwargs'], block_rules='slim')
  tx = adam_mini(1e-2, **options)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates))
  report = partition_report(params, **options)
  norm = next(
    leaf for leaf in report.leaves if leaf.path.endswith('norm/weight')
  )
  assert norm.v_shape == (32,)  # plain Adam for norm scales


def test_block_rules_are_checked():
  with pytest.raises(ValueError, match='block_rules must be one of'):
    adam_mini(1e-3, block_rules='slimadam')
  layout = optax_adam_mini.Layout.parse('mlp: in out')
  with pytest.raises(ValueError, match='block_rules must be one of'):
    optax_adam_mini.block_for(layout, (4, 8), block_rules='SLIM')
  with pytest.raises(ValueError, match='block_rules configure the default'):
    adam_mini(1e-3, partition=optax_adam_mini.Block.whole(), block_rules='slim')
