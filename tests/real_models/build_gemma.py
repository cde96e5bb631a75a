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
    'use_qk_norm final_logit_softcap attn_logits_soft_cap sliding_window_size'
  ).split()
  out = {k: getattr(cfg, k) for k in keep}
  out['num_layers'] = cfg.num_layers
  out['attention_types'] = [t.name for t in cfg.attention_types]
  return out


def _plain_dict(_node):
  return None  # gemma's params are plain dicts: no metadata wrappers


def _text_fixture(name, preset, num_heads, num_kv_heads, note):
  import jax
  import jax.numpy as jnp
  from gemma import gm

  attention_types = (
    gm.nn.AttentionType.LOCAL_SLIDING,
    gm.nn.AttentionType.GLOBAL,
  )
  cfg = dataclasses.replace(
    preset.config,
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
  ]
