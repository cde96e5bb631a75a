"""Fixtures: google `tunix` NNX models, as `nnx.Optimizer` hands them to optax.

Runs in its own venv (requirements/tunix.txt). `nnx.Optimizer(model, tx,
wrt=nnx.Param)` calls `tx.init(nnx.state(model, nnx.Param))`: an `nnx.State`
(nested dicts, DictKeys, layer indices as int keys) whose leaves are the
`nnx.Param` Variables themselves, each flattening to its array under
GetAttrKey('value') and carrying its sharding metadata (`out_sharding`), which
is recorded in "wrappers". Models are built by their own constructors under
`nnx.eval_shape`, tiny sizes, GQA (4 query / 2 KV heads) and head_dim 12 !=
width / heads = 8 wherever the config allows.

  /work/envs/tunix/bin/python tests/real_models/build_tunix.py
"""

import dataclasses
from importlib import metadata

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

VOCAB = 64
WIDTH = 32
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 12
LAYERS = 2
MLP = 40

TREE_FORM = (
  'nnx.state(model, nnx.Param), what nnx.Optimizer(model, tx, wrt=nnx.Param)'
  ' passes to tx.init: an nnx.State of nnx.Param Variables (path ends in'
  " GetAttrKey('value')), with their sharding metadata"
)

_SIZES = dict(
  num_layers=LAYERS,
  embed_dim=WIDTH,
  hidden_dim=MLP,
  num_heads=HEADS,
  head_dim=HEAD_DIM,
  num_kv_heads=KV_HEADS,
)
_GQA = {'num_heads': HEADS, 'num_kv_heads': KV_HEADS, 'head_dim': HEAD_DIM}
_MHA = dict(_GQA, num_kv_heads=HEADS)


def _gemma(**overrides):
  from tunix.models.gemma import model as gemma_lib  # noqa: PLC0415

  kinds = (
    gemma_lib.AttentionType.LOCAL_SLIDING,
    gemma_lib.AttentionType.GLOBAL,
  )
  sizes = dict(
    _SIZES,
    num_embed=VOCAB,
    final_logit_softcap=None,
    use_post_attn_norm=False,
    use_post_ffw_norm=False,
    attention_types=kinds,
    sliding_window_size=8,
  )
  return gemma_lib.ModelConfig(**dict(sizes, **overrides))


def _gemma4(**overrides):
  from tunix.models.gemma4 import model as gemma4_lib  # noqa: PLC0415

  local, glob = (
    gemma4_lib.AttentionType.LOCAL_SLIDING,
    gemma4_lib.AttentionType.GLOBAL,
  )
  sizes = dict(
    _SIZES,
    num_embed=VOCAB,
    sliding_window_size=8,
    attention_pattern=(local, glob),
    global_key_size=16,
  )
  return gemma4_lib.ModelConfig(**dict(sizes, **overrides))


def _models():
  """(name, description, model class, config, adam-mini head counts)."""
  # The tunix imports live in the functions (here and below): pytest
  # --doctest-modules imports this module where tunix is not installed.
  from tunix.models.gemma import model as gemma_lib  # noqa: PLC0415
  from tunix.models.gemma3 import model as gemma3_lib  # noqa: PLC0415
  from tunix.models.gemma4 import model as gemma4_lib  # noqa: PLC0415
  from tunix.models.llama3 import model as llama3_lib  # noqa: PLC0415
  from tunix.models.qwen2 import model as qwen2_lib  # noqa: PLC0415
  from tunix.models.qwen3 import model as qwen3_lib  # noqa: PLC0415

  rope = dict(rope_theta=10_000, norm_eps=1e-6)
  return [
    (
      'gemma_gqa',
      'Gemma (1/2) GQA: q_einsum + kv_einsum',
      gemma_lib.Gemma,
      _gemma(),
      _GQA,
    ),
    (
      'gemma2_mha',
      'Gemma 2 style MHA (post norms): fused qkv_einsum',
      gemma_lib.Gemma,
      _gemma(
        num_kv_heads=HEADS, use_post_attn_norm=True, use_post_ffw_norm=True
      ),
      _MHA,
    ),
    (
      'gemma3',
      'Gemma 3 GQA (query/key norms), text only',
      gemma3_lib.Gemma3,
      gemma3_lib.ModelConfig(**_SIZES, num_embed=VOCAB, sliding_window_size=8),
      _GQA,
    ),
    (
      'llama3',
      'Llama 3 GQA, untied lm_head',
      llama3_lib.Llama3,
      llama3_lib.ModelConfig(**_SIZES, vocab_size=VOCAB, **rope),
      _GQA,
    ),
    (
      'qwen2',
      'Qwen 2 GQA with q/k/v biases, untied lm_head',
      qwen2_lib.Qwen2,
      qwen2_lib.ModelConfig(**_SIZES, vocab_size=VOCAB, **rope),
      _GQA,
    ),
    (
      'qwen3',
      'Qwen 3 dense GQA (q_norm/k_norm), untied lm_head',
      qwen3_lib.Qwen3,
      qwen3_lib.ModelConfig(**_SIZES, vocab_size=VOCAB, **rope),
      _GQA,
    ),
    (
      'qwen3_moe',
      'Qwen 3 MoE (4 experts, top 2), tied embedding',
      qwen3_lib.Qwen3,
      qwen3_lib.ModelConfig(
        **_SIZES,
        vocab_size=VOCAB,
        **rope,
        num_experts=4,
        num_experts_per_tok=2,
        use_tied_embedding=True,
      ),
      _GQA,
    ),
    (
      'gemma4_e2b_style',
      'Gemma 4 E2B style: per-layer input embeddings, MQA, global layers with '
      'global_key_size 16',
      gemma4_lib.Gemma4,
      _gemma4(num_kv_heads=1, per_layer_input_dim=8),
      dict(_GQA, num_kv_heads=1),
    ),
    (
      'gemma4_moe_style',
      'Gemma 4 26B-A4B style: MoE (4 experts, top 2) beside a dense MLP, '
      'global layers with 1 KV head, k_eq_v_global, global_key_size 16',
      gemma4_lib.Gemma4,
      _gemma4(
        num_global_kv_heads=1,
        k_eq_v_global=True,
        enable_moe=True,
        num_experts=4,
        num_experts_per_tok=2,
        expert_dim=24,
        moe_dense_hidden_dim=MLP,
      ),
      _GQA,
    ),
  ]


def _config_record(config):
  return {
    f.name: record_tree.jsonable(getattr(config, f.name))
    for f in dataclasses.fields(config)
    if f.name not in ('shd_config',)
  }


def build():
  from flax import nnx  # noqa: PLC0415

  fixtures = []
  for name, description, model_cls, config, heads in _models():
    model = nnx.eval_shape(
      lambda cls=model_cls, cfg=config: cls(cfg, rngs=nnx.Rngs(0))
    )
    state = nnx.state(model, nnx.Param)
    fixtures.append(
      {
        'name': name,
        'library': 'tunix',
        'library_version': metadata.version('google-tunix'),
        'python': record_tree.python_version(),
        'versions': record_tree.versions(
          'google-tunix', 'jax', 'jaxlib', 'flax'
        ),
        'model': f'{model_cls.__module__}.{model_cls.__name__}: {description}',
        'config': dict(
          _config_record(config),
          shd_config=record_tree.jsonable(
            dataclasses.asdict(config.shd_config)
          ),
        ),
        'tree_form': TREE_FORM,
        'adam_mini_kwargs': heads,
        'leaves': record_tree.record_leaves(
          state,
          is_wrapper=lambda x: isinstance(x, nnx.Variable),
          describe=record_tree.describe_nnx_variable,
        ),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('tunix', build)
