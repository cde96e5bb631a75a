"""Fixtures: EasyDeL NNX models, as `EasyDeLState.create(..., tx=...)` inits optax.

Runs in its own venv (requirements/easydel.txt; Python 3.11 so that the CPU
torch wheel, which EasyDeL's module imports need, installs). `EasyDeLState.create(
model=model, tx=tx, init_opt_state=True)` calls `tx.init(graphstate)` with
`graphdef, graphstate, graphother = model.split_module()`, i.e.
`nnx.split(model, nnx.Param, ...)`: an nnx.State of Params (EasyDeL's
`ArrayParam` is an nnx.Param subclass; recorded as flax.nnx.Param with the
real class in annotations). EasyDeL keeps no sharding metadata on its Params
(its partition rules are regexes applied later), so the metadata is flax's
defaults. Models come from `<Model>.lazy_init(config=..., ...)`, EasyDeL's
own nnx.eval_shape init, tiny sizes, GQA 4/2 and head_dim 12 where allowed.

  /work/envs/easydel/bin/python tests/real_models/build_easydel.py
"""

from importlib import metadata

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

_BASE = dict(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=40,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=12,
  max_position_embeddings=16,
)
_GQA = {'num_heads': 4, 'num_kv_heads': 2, 'head_dim': 12}

# (name, config class, model class, config kwargs, adam-mini head counts).
# EasyDeL 0.3.0's GPT-2 is left out: its Conv1D makes `bias` of shape
# (in_features,) (easydel/modules/gpt2/modeling_gpt2.py), so c_attn's bias
# (32,) cannot be added to its (.., 96) output: the model does not run.
MODELS = [
  ('llama', 'LlamaConfig', 'LlamaForCausalLM', _BASE, _GQA),
  ('gemma2', 'Gemma2Config', 'Gemma2ForCausalLM', _BASE, _GQA),
  ('qwen2', 'Qwen2Config', 'Qwen2ForCausalLM', _BASE, _GQA),
  ('phi3', 'Phi3Config', 'Phi3ForCausalLM', _BASE, _GQA),
  (
    'gpt_neox',
    'GPTNeoXConfig',
    'GPTNeoXForCausalLM',
    dict(
      vocab_size=64,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=40,
      max_position_embeddings=16,
    ),
    {'num_heads': 4, 'num_kv_heads': 4, 'head_dim': 8},
  ),
  (
    'mixtral',
    'MixtralConfig',
    'MixtralForCausalLM',
    dict(_BASE, num_local_experts=4, num_experts_per_tok=2),
    _GQA,
  ),
  (
    'qwen3_moe',
    'Qwen3MoeConfig',
    'Qwen3MoeForCausalLM',
    dict(_BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24),
    _GQA,
  ),
  (
    'gpt_oss',
    'GptOssConfig',
    'GptOssForCausalLM',
    dict(_BASE, num_local_experts=4, num_experts_per_tok=2),
    _GQA,
  ),
  (
    # MLA (q_lora_rank 16, kv_lora_rank 8, rope 4 + nope 8 = q head 12,
    # v_head_dim 12); layer 0 dense, layer 1 MoE with a shared expert.
    'deepseek_v3',
    'DeepseekV3Config',
    'DeepseekV3ForCausalLM',
    dict(
      _BASE,
      moe_intermediate_size=24,
      n_routed_experts=4,
      num_experts_per_tok=2,
      n_shared_experts=1,
      first_k_dense_replace=1,
      q_lora_rank=16,
      kv_lora_rank=8,
      qk_rope_head_dim=4,
      qk_nope_head_dim=8,
      v_head_dim=12,
      n_group=1,
      topk_group=1,
    ),
    _GQA,
  ),
]


def build():
  # Imported here: pytest --doctest-modules imports this module bare.
  import easydel  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  def describe(variable):
    record = record_tree.describe_nnx_variable(variable)
    record['type'] = 'flax.nnx.Param'  # ArrayParam subclasses it
    return record

  def annotate(keys, leaf):
    del leaf
    node = state
    for key in keys[:-1]:
      node = node[key.key]
    return {'param_class': type(node).__module__ + '.' + type(node).__name__}

  fixtures = []
  for name, config_name, model_name, kwargs, heads in MODELS:
    config = getattr(easydel, config_name)(**kwargs)
    model = getattr(easydel, model_name).lazy_init(
      config=config,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      precision='high',
      rngs=nnx.Rngs(0),
    )
    _, state, _ = model.split_module()
    fixtures.append(
      {
        'name': name,
        'library': 'easydel',
        'library_version': metadata.version('easydel'),
        'python': record_tree.python_version(),
        'versions': record_tree.versions(
          'easydel', 'eformer', 'jax', 'jaxlib', 'flax'
        ),
        'model': f'easydel.{model_name} ({config_name})',
        'config': kwargs,
        'tree_form': (
          'graphstate of model.split_module() (nnx.split(model, nnx.Param,'
          ' ...)), what EasyDeLState.create(model=..., tx=...,'
          ' init_opt_state=True) passes to tx.init: an nnx.State of Params'
        ),
        'adam_mini_kwargs': heads,
        'leaves': record_tree.record_leaves(
          state,
          is_wrapper=lambda x: isinstance(x, nnx.Variable),
          describe=describe,
          annotate=annotate,
        ),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('easydel', build)
