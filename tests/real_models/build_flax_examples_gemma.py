"""Fixtures: flax's own `examples/gemma` NNX Transformer, as its train.py optimises it.

flax does not ship its examples in the wheel, so this needs a checkout of
google/flax's `examples/gemma` (requirements/flax_gemma.txt names the commit)
in FLAX_GEMMA_EXAMPLE (default /work/envs/flax_examples/examples/gemma), run
with a venv that has flax 0.12, jaxtyping and orbax-checkpoint (the tunix venv
does). train.py builds `nnx.Optimizer(model, tx, wrt=nnx.Param)` under
`ShardingConfig.fsdp_tp_sharding(...)` inside `jax.set_mesh`, which calls
`tx.init(nnx.state(model, nnx.Param))`: that tree is recorded, its Params'
`out_sharding` PartitionSpecs included.

  FLAX_GEMMA_EXAMPLE=... /work/envs/tunix/bin/python \
    tests/real_models/build_flax_examples_gemma.py
"""

import dataclasses
import os
import sys

import jax

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

EXAMPLE_DIR = os.environ.get(
  'FLAX_GEMMA_EXAMPLE', '/work/envs/flax_examples/examples/gemma'
)
FLAX_COMMIT = '18f8f311c275d57f46d95e41b15aa97b454754c0'

TINY = dict(
  num_layers=2,
  num_embed=64,
  embed_dim=32,
  hidden_dim=40,
  num_heads=4,
  head_dim=12,
  sliding_window_size=8,
)


def build():
  from flax import nnx  # noqa: PLC0415 (pytest imports this module bare)

  sys.path.insert(0, EXAMPLE_DIR)
  import transformer as transformer_lib  # noqa: PLC0415 (the example's module)
  import transformer_cfg  # noqa: PLC0415

  # As train.py: these axis names, and a mesh (one CPU device here) around
  # the model's construction, which variables with out_sharding require.
  shd_config = transformer_cfg.ShardingConfig.fsdp_tp_sharding(
    fsdp_axis_name='fsdp', tensor_parallel_axis_name='tensor'
  )
  mesh = jax.make_mesh((1, 1), ('fsdp', 'tensor'))
  config_cls = transformer_cfg.TransformerConfig
  two_layers = transformer_cfg.make_attention_layers_types(
    (
      transformer_cfg.AttentionType.LOCAL_SLIDING,
      transformer_cfg.AttentionType.GLOBAL,
    ),
    2,
  )
  variants = [
    (
      'gemma2_gqa',
      'gemma2_2b preset, GQA (q_einsum + kv_einsum)',
      config_cls.gemma2_2b(
        **TINY,
        num_kv_heads=2,
        attention_types=two_layers,
        shd_config=shd_config,
      ),
    ),
    (
      'gemma3_mqa_qk_norm',
      'gemma3_1b preset, MQA, query/key norms',
      config_cls.gemma3_1b(
        **TINY,
        num_kv_heads=1,
        attention_types=two_layers,
        shd_config=shd_config,
      ),
    ),
    (
      'gemma_mha',
      'gemma_2b preset with num_kv_heads = num_heads (qkv_einsum)',
      config_cls.gemma_2b(
        **dict(TINY, sliding_window_size=None),
        num_kv_heads=4,
        shd_config=shd_config,
      ),
    ),
  ]
  fixtures = []
  for name, description, config in variants:
    with jax.set_mesh(mesh):
      model = nnx.eval_shape(
        lambda cfg=config: transformer_lib.Transformer(cfg, rngs=nnx.Rngs(0))
      )
      state = nnx.state(model, nnx.Param)
    config_record = {
      f.name: record_tree.jsonable(getattr(config, f.name))
      for f in dataclasses.fields(config)
    }
    fixtures.append(
      {
        'name': name,
        'library': 'flax_examples_gemma',
        'library_version': f'google/flax examples/gemma @ {FLAX_COMMIT}',
        'python': record_tree.python_version(),
        'versions': record_tree.versions('flax', 'jax', 'jaxlib'),
        'model': f'examples/gemma transformer.Transformer: {description}',
        'config': config_record,
        'tree_form': (
          "nnx.state(model, nnx.Param), what train.py's nnx.Optimizer(model,"
          ' tx, wrt=nnx.Param) passes to tx.init; Params carry out_sharding'
          ' from ShardingConfig.fsdp_tp_sharding()'
        ),
        'adam_mini_kwargs': {
          'num_heads': config.num_heads,
          'num_kv_heads': config.num_kv_heads,
          'head_dim': config.head_dim,
        },
        'leaves': record_tree.record_leaves(
          state,
          is_wrapper=lambda x: isinstance(x, nnx.Variable),
          describe=record_tree.describe_nnx_variable,
        ),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('flax_examples_gemma', build)
