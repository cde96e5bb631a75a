"""Fixtures from google-deepmind `gemma` (PyPI `gemma`, the Flax `gm.nn` models).

Run in /work/envs/gemma (requirements/gemma.txt):
  python tests/real_models/make_fixtures.py gemma

Each tree is `model.init(rng, tokens)['params']` under `jax.eval_shape`: the
plain nested dict that kauldron's trainer hands to `optimizer.init`
(kauldron/train/train_step.py, `_init_model` pops 'params' from the unfrozen
collections, `_init_optimizer` calls `self.optimizer.init(state.params)`).
The models are the library's own classes (gm.nn.Gemma2_2B, gm.nn.Gemma3_1B,
...) with `config=dataclasses.replace(<the preset config>, <tiny sizes>)`, so
every flag of the family (post-norms, qk-norm, gating layout) is the preset's.
"""

from __future__ import annotations

import dataclasses

try:  # as tests.real_models.<module> (pytest's doctest collection)
  from . import fixture_util
except ImportError:  # as a script's sibling (make_fixtures.py)
  import fixture_util

# Tiny sizes shared by every fixture. head_dim != embed_dim / num_heads on
# purpose (32 / 4 = 8, head_dim 12) so a rule that infers it from D is caught.
VOCAB = 64
EMBED = 32
HIDDEN = 48
HEAD_DIM = 12
NUM_LAYERS = 2


def _versions():
  return fixture_util.versions(
    'gemma', 'jax', 'jaxlib', 'flax', 'kauldron', 'numpy'
  )


def _config_record(cfg) -> dict:
  keep = (
    'num_embed embed_dim hidden_dim num_heads head_dim num_kv_heads '
    'use_post_attn_norm use_post_ffw_norm transpose_gating_einsum '
    'use_qk_norm final_logit_softcap attn_logits_soft_cap sliding_window_size '
    'num_global_kv_heads global_key_size k_eq_v_global per_layer_input_dim '
    'enable_moe num_experts expert_dim top_k_experts moe_dense_hidden_dim '
    'override_kv_shared_ffw_hidden use_altup num_altup_inputs use_laurel '
    'laurel_rank use_value_norm'
  ).split()
  out = {k: getattr(cfg, k) for k in keep if hasattr(cfg, k)}
  if getattr(cfg, 'kv_cache_sharing_config', None) is not None:
    out['kv_cache_sharing_config'] = repr(cfg.kv_cache_sharing_config)
  out['num_layers'] = cfg.num_layers
  out['attention_types'] = [t.name for t in cfg.attention_types]
  return out


def _plain_dict(_node):
  return None  # gemma's params are plain dicts: no metadata wrappers


def _text_fixture(name, preset, num_heads, num_kv_heads, note, **extra):
  import jax
  import jax.numpy as jnp

  # One local sliding-window layer then one global layer, in the preset's
  # own AttentionType enum (Gemma 4 has its own).
  kinds = type(preset.config.attention_types[0])
  attention_types = (kinds.LOCAL_SLIDING, kinds.GLOBAL)
  fields = dict(
    num_embed=VOCAB,
    embed_dim=EMBED,
    hidden_dim=HIDDEN,
    num_heads=num_heads,
    head_dim=HEAD_DIM,
    num_kv_heads=num_kv_heads,
    attention_types=attention_types[:NUM_LAYERS],
    sliding_window_size=4,
    vision_encoder=None,
  )
  fields.update(extra)
  cfg = dataclasses.replace(preset.config, **fields)
  model = preset(config=cfg, tokens='batch.tokens')
  tokens = jnp.zeros((1, 8), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)
  params = dict(variables)['params']
  return {
    'name': name,
    'library': 'gemma',
    'library_version': _versions()['gemma'],
    'python': fixture_util.python_version(),
    'versions': _versions(),
    'model': f'{preset.__name__} family at tiny sizes: {note}',
    'config': {'class': f'gm.nn.{preset.__name__}', **_config_record(cfg)},
    'tree_form': (
      "plain nested dict: model.init(rng, tokens)['params'], what kauldron's "
      'trainer hands to optimizer.init (params dtype as gm.nn.Transformer '
      'inits them, bfloat16 by default)'
    ),
    'adam_mini_kwargs': {
      'num_heads': num_heads,
      'num_kv_heads': num_kv_heads,
      'head_dim': HEAD_DIM,
    },
    'leaves': fixture_util.leaf_records(params, _plain_dict),
  }


def build() -> list[dict]:
  from gemma import gm

  return [
    _text_fixture(
      'gemma2_gqa',
      gm.nn.Gemma2_2B,
      4,
      2,
      'GQA 4 query / 2 KV heads: split q_einsum (H,D,Dh) and kv_einsum '
      '(2,K,D,Dh); gating_einsum (2,D,F); post-norms',
    ),
    _text_fixture(
      'gemma2_mha',
      gm.nn.Gemma2_2B,
      4,
      4,
      'MHA 4 heads: fused qkv_einsum (3,H,D,Dh); gating_einsum (2,D,F)',
    ),
    _text_fixture(
      'gemma2_mqa',
      gm.nn.Gemma2_2B,
      4,
      1,
      'MQA 4 query / 1 KV head: kv_einsum (2,1,D,Dh)',
    ),
    _text_fixture(
      'gemma3_gqa',
      gm.nn.Gemma3_1B,
      4,
      2,
      'GQA 4 query / 2 KV heads, qk-norm scales (Dh,), transposed '
      'gating_einsum (2,F,D), post-norms',
    ),
    _text_fixture(
      'gemma3_mqa',
      gm.nn.Gemma3_1B,
      4,
      1,
      'MQA 4 query / 1 KV head (as Gemma3 1B), qk-norm, gating (2,F,D)',
    ),
    _text_fixture(
      'gemma3_mha',
      gm.nn.Gemma3_1B,
      4,
      4,
      'MHA 4 heads: fused qkv_einsum (3,H,D,Dh) with qk-norm, gating (2,F,D)',
    ),
    _text_fixture(
      'gemma3n_e2b_gqa',
      gm.nn.Gemma3n_E2B,
      4,
      2,
      'Gemma 3n E2B: GQA 4/2, AltUp (4 streams: projections, router, '
      'prediction/correction coefficients), LAuReL low-rank residual, '
      'per-layer inputs, value norm, activation sparsity on layer 0',
      per_layer_input_dim=8,
      laurel_rank=6,
      activation_sparsity_pattern=(0.95, 0.0),
    ),
    _text_fixture(
      'gemma4_31b_gqa',
      gm.nn.Gemma4_31B,
      4,
      2,
      'Gemma 4 dense: GQA 4/2 local layer, global layer with 1 KV head of '
      'width 16 and k_eq_v_global (one k_einsum (K,D,Dh) serves as key and '
      'value), qk-norm, skip_scale',
      num_global_kv_heads=1,
      global_key_size=16,
      audio_encoder=None,
    ),
    _text_fixture(
      'gemma4_26b_a4b_moe',
      gm.nn.Gemma4_26B_A4B,
      4,
      2,
      'Gemma 4 MoE: 6 experts top-2 (gating_einsum (E,2,F,D), linear '
      '(E,F,D), router_logits (D,E), router_scale, per_expert_scale) plus '
      'the dense mlp2, k_eq_v_global',
      num_global_kv_heads=1,
      global_key_size=16,
      audio_encoder=None,
      num_experts=6,
      expert_dim=40,
      top_k_experts=2,
      moe_dense_hidden_dim=48,
    ),
    _text_fixture(
      'gemma4_e2b_mqa',
      gm.nn.Gemma4_E2B,
      4,
      1,
      'Gemma 4 E2B: MQA, per-layer input embeddings (V, L, P) and '
      'projections, KV-cache sharing, wider MLP on KV-shared layers',
      global_key_size=16,
      audio_encoder=None,
      per_layer_input_dim=8,
      override_kv_shared_ffw_hidden=56,
    ),
  ]
