"""Fixtures from MaxText (PyPI `maxtext`, AI-Hypercomputer/maxtext).

Run in /work/envs/maxtext (requirements/maxtext.txt), with DECOUPLE_GCLOUD=TRUE
(MaxText's own switch for running without the Google Cloud clients):
  DECOUPLE_GCLOUD=TRUE python tests/real_models/make_fixtures.py maxtext

Every decoder block MaxText 0.2.5 ships (common/common_types.py
DecoderBlockType) is built from one of its own model configs
(configs/models/<model_name>.yml) with tiny sizes passed as overrides, through
`pyconfig.initialize` and `model_creation_utils`, all under `jax.eval_shape` /
`nnx.eval_shape`. Each model is recorded in the NNX tree form, and the
decoders in LINEN_FOR also in the Linen form, the two forms MaxText hands to
an optax transformation:

- 'nnx': what `nnx.Optimizer(model, tx, wrt=nnx.Param)` passes to `tx.init`
  (flax/nnx/training/optimizer.py: `tx.init(nnx.state(model, wrt))`), the
  path MaxText 0.2.5's trainer takes (utils/train_utils.py
  `create_train_state_fn`). The leaves are nnx.Param variables carrying the
  logical axis names ('sharding_names'/'out_sharding') and, when scanned,
  'param_scan_axis'. Note: `Optimizer.update` then calls `tx.update` on
  `nnx.as_pure(...)` of the same state, i.e. the same dict paths without the
  Variable nodes.
- 'linen': what `maxtext_utils.init_initial_state(model, tx, config, True,
  key)` hands to `tx.init` through `TrainState.create` (utils/maxtext_utils.py
  lines 1567-1597): the whole Linen variables dict {'params': ...} of the
  ToLinen-wrapped Transformer (`models.transformer_as_linen`, metadata_fn
  `initializers.variable_to_logically_partitioned`), with
  nn.LogicallyPartitioned boxes.

The transformation is a recorder: its `init` stores the tree it is given, so
the fixture is exactly what a real optimizer would see.
"""

from __future__ import annotations

import os
import sys

try:  # as tests.real_models.<module> (pytest's doctest collection)
  from . import fixture_util
except ImportError:  # as a script's sibling (make_fixtures.py)
  import fixture_util

# Tiny sizes for every decoder (overridden per model below where the family
# needs its own keys). head_dim 12 != emb 32 / 4 heads on purpose.
COMMON = dict(
  base_emb_dim=32,
  base_num_query_heads=4,
  base_num_kv_heads=2,
  head_dim=12,
  base_mlp_dim=48,
  base_num_decoder_layers=2,
  vocab_size=64,
  max_target_length=8,
  per_device_batch_size=1,
  # CPU only: the reference dot-product attention and the dense MoE path;
  # neither changes a parameter's shape or name (layers/moe.py creates the
  # same wi_0/wi_1/wo either way).
  attention='dot_product',
  megablox=False,
  sparse_matmul=False,
  enable_checkpointing=False,
  run_name='fixtures',
  skip_jax_distributed_system=True,
  use_multimodal=False,
)

# MoE sizes, only for the MoE models (several decoders, gemma4 among them,
# switch to MoE whenever num_experts > 1). Where dense and MoE MLPs coexist
# (shared experts, dense first layers) the expert width differs (40 vs 48)
# so the two are told apart; MaxText requires them equal for a fully MoE
# model.
# 6 experts: no size shared with heads (4), KV heads (2) or layers (2).
MOE = dict(num_experts=6, num_experts_per_tok=2, base_moe_mlp_dim=48)
MOE_MIXED = dict(MOE, base_moe_mlp_dim=40)

# Latent ranks differ from the q/k head width (12 + 4 = 16) and each other.
MLA = dict(
  q_lora_rank=20,
  kv_lora_rank=8,
  qk_nope_head_dim=12,
  qk_rope_head_dim=4,
  v_head_dim=10,
)

# (fixture stem, model_name yml, extra overrides, what it shows)
MODELS = [
  ('llama2', 'llama2-7b', {}, 'llama2 decoder, GQA 4/2 (llama2/llama3)'),
  (
    'llama2_fused_qkv',
    'llama2-7b',
    # head_dim 10: H + 2K = 12 heads would equal head_dim 12 otherwise.
    {'fused_qkv': True, 'base_num_kv_heads': 4, 'head_dim': 10},
    'llama2 decoder with fused_qkv (qkv_proj; MHA 4/4)',
  ),
  (
    'llama2_fused_qkv_gqa',
    'llama2-7b',
    {'fused_qkv': True},
    'llama2 decoder with fused_qkv under GQA 4/2 (qkv_proj holds H+2K heads)',
  ),
  ('llama3', 'llama3-8b', {}, 'llama3 (llama2 decoder block), GQA 4/2'),
  ('mistral', 'mistral-7b', {}, 'mistral decoder, GQA 4/2'),
  ('mixtral', 'mixtral-8x7b', MOE, 'mixtral: MoE 4 experts top-2, router'),
  (
    'deepseek3',
    'deepseek3-tiny',
    dict(
      MLA,
      **MOE_MIXED,
      base_num_kv_heads=4,
      first_num_dense_layers=1,
      shared_experts=1,
    ),
    'deepseek decoder: MLA (q_lora/kv_lora), 1 dense + 1 MoE layer, '
    'shared expert, routed bias',
  ),
  (
    'deepseek2',
    'deepseek2-16b',
    dict(
      MLA,
      **MOE_MIXED,
      base_num_kv_heads=4,
      q_lora_rank=0,
      first_num_dense_layers=1,
    ),
    'deepseek decoder with q_lora_rank=0 (plain query, low-rank kv)',
  ),
  ('gemma', 'gemma-2b', {'base_num_kv_heads': 1}, 'gemma: MQA 4/1, tied'),
  ('gemma2', 'gemma2-2b', {}, 'gemma2: local+global pair per layer'),
  (
    'gemma3',
    'gemma3-4b',
    {'base_num_decoder_layers': 6},
    'gemma3: qk-norm, 6 layers = one scanned 5 local + 1 global block, text only',
  ),
  (
    'gemma4',
    'gemma4-26b',
    dict(
      MOE_MIXED,
      base_num_decoder_layers=6,
      global_head_dim=16,
      global_num_kv_heads=1,
      shared_experts=1,
    ),
    'gemma4 (26B-A4B family): MoE + shared expert, shared k/v projection',
  ),
  (
    'gemma4_dense',
    'gemma4-31b',
    dict(base_num_decoder_layers=6, global_head_dim=16, global_num_kv_heads=1),
    'gemma4 (31B family): dense, shared k/v projection',
  ),
  (
    'gemma4_small',
    'gemma4-e2b',
    dict(
      base_num_kv_heads=1,
      global_head_dim=16,
      hidden_size_per_layer_input=8,
      vocab_size_per_layer_input=64,
      num_kv_shared_layers=0,
    ),
    'gemma4_small (E2B family): per-layer inputs, double-wide MLP',
  ),
  ('qwen2', 'qwen2.5-7b', {}, 'qwen2: attention biases'),
  ('qwen3', 'qwen3-0.6b', {}, 'qwen3 dense: qk-norm, tied'),
  ('qwen3_moe', 'qwen3-30b-a3b', MOE, 'qwen3 MoE'),
  (
    'qwen3_custom_moe',
    'qwen3-custom-30b-a3b',
    dict(MOE, attention_output_dim=24, moe_expert_input_dim=24),
    'qwen3 custom MoE',
  ),
  (
    'qwen3_next',
    'qwen3-next-80b-a3b',
    dict(
      MOE_MIXED,
      base_num_decoder_layers=4,
      head_dim=16,  # partial_rotary_factor 0.25 needs an even rotary dim
      gdn_key_head_dim=8,
      gdn_value_head_dim=8,
      gdn_num_key_heads=2,
      gdn_num_value_heads=4,
      shared_experts=1,
    ),
    'qwen3_next: gated delta net + gated attention, MoE + shared expert',
  ),
  (
    'qwen3_5',
    'qwen3.5-35b-a3b',
    dict(
      MOE_MIXED,
      base_num_decoder_layers=4,
      head_dim=24,  # rotary 6 = 3 frequencies for mrope_section
      mrope_section=[
        1,
        1,
        1,
      ],  # partial_rotary_factor 0.25 needs an even rotary dim
      gdn_key_head_dim=8,
      gdn_value_head_dim=8,
      gdn_num_key_heads=2,
      gdn_num_value_heads=4,
      shared_experts=1,
    ),
    'qwen3_5: gated delta net + gated attention, MoE, text only',
  ),
  ('gpt3', 'gpt3-52k', {'base_num_kv_heads': 4}, 'gpt3: fused qkv, biases'),
  ('gpt_oss', 'gpt-oss-20b', MOE, 'gpt-oss: MoE with biases, sinks'),
  (
    'llama4',
    'llama4-17b-16e',
    # MaxText's config check: 'Only top-1 routing is supported for Llama4'.
    dict(
      MOE_MIXED,
      base_num_decoder_layers=4,
      shared_experts=1,
      num_experts_per_tok=1,
    ),
    'llama4: MoE + shared expert, nope layers',
  ),
  (
    'olmo3',
    'olmo3-7b',
    dict(base_num_decoder_layers=4),
    'olmo3: qk-norm, sliding + global',
  ),
  (
    'deepseek4',
    'deepseek4-tiny',
    dict(
      MOE,  # fully MoE: MaxText requires moe width == mlp width
      base_num_kv_heads=1,
      base_num_decoder_layers=4,
      first_num_hash_layers=1,
      compress_ratios=[0, 4, 0, 4],
      head_dim=16,
      qk_rope_head_dim=8,
      indexer_head_dim=8,
      indexer_n_heads=2,
      indexer_topk=4,
      q_lora_rank=20,
      o_groups=2,
      o_lora_rank=8,
      sliding_window_size=4,
      shared_experts=1,
    ),
    'deepseek4: compressed attention, indexer, mHC',
  ),
  (
    'envy',
    'envy-test',
    dict(MOE, base_num_decoder_layers=2),
    'envy: switch MoE every 2nd layer',
  ),
  ('default', None, {'decoder_block': 'default'}, 'default decoder block'),
  ('simple', None, {'decoder_block': 'simple'}, 'simple test decoder'),
  ('simple_mlp', None, {'decoder_block': 'simple_mlp'}, 'simple MLP decoder'),
]

# Scan variants: MaxText's default is scan_layers=True, param_scan_axis=1.
VARIANTS = [
  ('scanned', {}, 'scanned (scan_layers=True, param_scan_axis=1, default)'),
  ('unscanned', {'scan_layers': False}, 'unscanned (scan_layers=False)'),
]
# Variants MaxText itself refuses: gemma4-e2b 'requires scan_layers=False'
# (its config check); the simple/simple_mlp test decoders only run scanned
# (unscanned init fails inside MaxText: 'not enough values to unpack').
ONLY = {
  'gemma4_small': ('unscanned',),
  'simple': ('scanned',),
  'simple_mlp': ('scanned',),
}
AXIS0_FOR = {'llama2', 'mixtral', 'deepseek3', 'gemma3', 'qwen3_moe'}
AXIS0 = (
  'scan_axis0',
  {'param_scan_axis': 0},
  'scanned with param_scan_axis=0',
)

# The Linen form (init_initial_state) has the same leaves and names as the
# NNX form under a 'params' key, plus any non-param collections (deepseek's
# MoEBiasVar, deepseek4's Tid2EidVar). It is recorded for these decoders only,
# which cover every such difference, to keep the test suite's size in check.
LINEN_FOR = {
  'llama2',
  'llama2_fused_qkv_gqa',
  'mixtral',
  'deepseek3',
  'deepseek4',
  'gemma3',
  'gpt3',
  'qwen3_next',
}

VERSIONS = ('maxtext', 'jax', 'jaxlib', 'flax', 'optax', 'numpy', 'pydantic')


def _json(value):
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (list, tuple)):
    return [_json(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _json(v) for k, v in value.items()}
  return repr(value)


def _describe(node):
  from flax import linen as nn
  from flax import nnx

  if isinstance(node, nn.LogicallyPartitioned):
    return {
      'type': 'flax.linen.LogicallyPartitioned',
      'names': _json(node.names),
      'mesh': None if node.mesh is None else repr(node.mesh),
      'rules': _json(node.rules),
    }
  if isinstance(node, nn.Partitioned):
    return {'type': 'flax.linen.Partitioned', 'names': _json(node.names)}
  if isinstance(node, nnx.Variable):
    meta = {
      k: _json(v)
      for k, v in node.get_metadata().items()
      if k not in ('hijax', 'ref', 'eager_sharding')
    }
    return {'type': f'flax.nnx.{type(node).__name__}', 'metadata': meta}
  return None


def _recorder():
  import optax

  seen = {}

  def init(params):
    seen['tree'] = params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return updates, state

  return optax.GradientTransformation(init, update), seen


def _config(model_name, extra):
  from maxtext.configs import pyconfig

  base = os.path.join(os.path.dirname(pyconfig.__file__), 'base.yml')
  kwargs = dict(COMMON)
  if model_name is not None:
    kwargs.update(model_name=model_name, override_model_config=True)
  kwargs.update(extra)
  return pyconfig.initialize([None, base], **kwargs), kwargs


def _trees(cfg):
  import jax
  from flax import linen as nn
  from flax import nnx
  from maxtext.common import train_state_nnx
  from maxtext.utils import maxtext_utils, model_creation_utils

  mesh = maxtext_utils.get_mesh_from_config(cfg)
  trees = {}

  tx, seen = _recorder()
  create, _ = model_creation_utils.create_nnx_abstract_model(cfg, mesh)

  def make_train_state():
    model = create()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return train_state_nnx.TrainStateNNX(model, optimizer)

  with nn.partitioning.axis_rules(cfg.logical_axis_rules):
    nnx.eval_shape(make_train_state)
  trees['nnx'] = seen.pop('tree')

  tx, seen = _recorder()
  model = model_creation_utils.from_config(cfg, mesh=mesh)
  with jax.set_mesh(mesh), nn.partitioning.axis_rules(cfg.logical_axis_rules):
    jax.eval_shape(
      lambda key: maxtext_utils.init_initial_state(model, tx, cfg, True, key),
      jax.random.PRNGKey(0),
    )
  trees['linen'] = seen.pop('tree')
  return trees


CONFIG_KEYS = (
  'decoder_block emb_dim num_query_heads num_kv_heads head_dim mlp_dim '
  'moe_mlp_dim num_experts num_experts_per_tok shared_experts '
  'num_decoder_layers first_num_dense_layers vocab_size scan_layers '
  'param_scan_axis fused_qkv fused_mlp logits_via_embedding use_qk_norm '
  'attention_type q_lora_rank kv_lora_rank qk_nope_head_dim qk_rope_head_dim '
  'v_head_dim share_kv_projections global_head_dim global_num_kv_heads '
  'attention_bias mlp_bias routed_bias use_post_attn_norm use_post_ffw_norm '
  'inhomogeneous_layer_cycle_interval interleave_moe_layer_step '
  'attention_output_dim moe_expert_input_dim gdn_key_head_dim '
  'gdn_value_head_dim gdn_num_key_heads gdn_num_value_heads '
  'hidden_size_per_layer_input vocab_size_per_layer_input use_double_wide_mlp '
  'o_groups o_lora_rank indexer_head_dim indexer_n_heads mhc_expansion_rate '
  'first_num_hash_layers compress_ratios trainable_position_size '
  'use_iota_embed mlp_activations weight_dtype'
).split()


def _config_record(cfg) -> dict:
  out = {}
  for key in CONFIG_KEYS:
    try:
      out[key] = _json(getattr(cfg, key))
    except (AttributeError, KeyError, ValueError):
      pass
  return out


def _head_kwargs(cfg) -> dict:
  """The head counts a user passes from the config.

  Under MLA the config's head_dim is unused: a query/key head is
  qk_nope_head_dim + qk_rope_head_dim wide (layers/attention_mla.py).
  """
  head_dim = int(cfg.head_dim)
  if str(getattr(cfg, 'attention_type', '')) in ('mla', 'AttentionType.MLA'):
    head_dim = int(cfg.qk_nope_head_dim) + int(cfg.qk_rope_head_dim)
  return {
    'num_heads': int(cfg.num_query_heads),
    'num_kv_heads': int(cfg.num_kv_heads),
    'head_dim': head_dim,
  }


def _fixture(stem, model_name, extra, note, variant):
  vname, vextra, vnote = variant
  cfg, kwargs = _config(model_name, {**extra, **vextra})
  trees = _trees(cfg)
  vers = fixture_util.versions(*VERSIONS)
  out = []
  forms = {
    'nnx': (
      'nnx.State of nnx.Param variables: what nnx.Optimizer(model, tx, '
      "wrt=nnx.Param) hands to tx.init (MaxText's trainer, "
      'utils/train_utils.py); tx.update later gets nnx.as_pure of the same '
      'state (same dict paths, no Variable nodes)'
    ),
    'linen': (
      "Linen variables {'params': ...} with nn.LogicallyPartitioned boxes, "
      'as maxtext_utils.init_initial_state hands them to tx.init via '
      'TrainState.create (ToLinen-wrapped Transformer)'
    ),
  }
  record = _config_record(cfg)
  for form, tree in trees.items():
    if form == 'linen' and stem not in LINEN_FOR:
      continue
    out.append(
      {
        'name': f'{stem}_{vname}_{form}',
        'library': 'maxtext',
        'library_version': vers['maxtext'],
        'python': fixture_util.python_version(),
        'versions': vers,
        'model': f'{note}; {vnote}; {form} tree',
        'config': {
          'model_name': model_name,
          'overrides': _json(kwargs),
          **record,
        },
        'tree_form': forms[form],
        'adam_mini_kwargs': _head_kwargs(cfg),
        'leaves': fixture_util.leaf_records(tree, _describe),
      }
    )
  return out


def build(only: str | None = None) -> list[dict]:
  only = only or os.environ.get('MAXTEXT_FIXTURES_ONLY')
  wanted = set(only.split(',')) if only else None
  fixtures, failures = [], []
  for stem, model_name, extra, note in MODELS:
    if wanted and stem not in wanted:
      continue
    variants = list(VARIANTS) + ([AXIS0] if stem in AXIS0_FOR else [])
    if stem in ONLY:
      variants = [v for v in variants if v[0] in ONLY[stem]]
    for variant in variants:
      try:
        fixtures.extend(_fixture(stem, model_name, extra, note, variant))
        print(f'built {stem} {variant[0]}', file=sys.stderr)
      except Exception as e:  # noqa: BLE001 -- report every model's failure
        msg = f'{stem} {variant[0]}: {type(e).__name__}: {e}'
        failures.append(msg.splitlines()[0][:400])
        print('FAILED ' + failures[-1], file=sys.stderr)
  if failures:
    print(
      '\n'.join(['MaxText fixtures not built:'] + failures), file=sys.stderr
    )
  return fixtures
