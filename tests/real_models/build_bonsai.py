"""Fixtures: jax-ml/bonsai Qwen 3 (NNX), as `nnx.Optimizer` hands it to optax.

bonsai is not on PyPI (the `jax-bonsai` 0.0.1 there is an empty placeholder),
so this runs the model code of a jax-ml/bonsai checkout (requirements/
bonsai.txt names the commit) found in BONSAI_SRC (default
/work/envs/bonsai_src), in the tunix venv (flax 0.12.12). The model is built
with its sharded config (`ModelConfig._from_param(use_fsdp=True,
use_tp=True, ...)`, as its presets do) inside a ('fsdp', 'tp') mesh, under
`nnx.eval_shape`; the tree recorded is `nnx.state(model, nnx.Param)`, with
the Params' `out_sharding`.

  /work/envs/tunix/bin/python tests/real_models/build_bonsai.py
"""

import os
import sys

import jax

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

BONSAI_SRC = os.environ.get('BONSAI_SRC', '/work/envs/bonsai_src')
BONSAI_COMMIT = '36284254cf738d99c1c5d1e3a292d27656a0a365'

TINY_QWEN3 = dict(
  num_layers=2,
  vocab_size=64,
  emb_dim=32,
  mlp_dim=40,
  num_heads=4,
  head_dim=12,
  num_kv_heads=2,
  norm_eps=1e-6,
  rope_theta=1_000_000,
  rope_scaling_factor=8.0,
  local_rope_theta=1e4,
)


def build():
  from flax import nnx  # noqa: PLC0415 (pytest imports this module bare)

  sys.path.insert(0, BONSAI_SRC)
  from bonsai.models.qwen3 import modeling as qwen3  # noqa: PLC0415

  mesh = jax.make_mesh((1, 1), ('fsdp', 'tp'))
  fixtures = []
  # tie_word_embeddings changes no param (the model always has an lm_head;
  # tying happens when weights are loaded), so one tree covers both.
  for name, tied in (('qwen3', False),):
    config = qwen3.ModelConfig._from_param(
      use_fsdp=True, use_tp=True, tie_word_embeddings=tied, **TINY_QWEN3
    )
    with jax.set_mesh(mesh):
      model = nnx.eval_shape(
        lambda cfg=config: qwen3.Qwen3(cfg, rngs=nnx.Rngs(0))
      )
      state = nnx.state(model, nnx.Param)
    fixtures.append(
      {
        'name': name,
        'library': 'bonsai',
        'library_version': f'jax-ml/bonsai @ {BONSAI_COMMIT}',
        'python': record_tree.python_version(),
        'versions': record_tree.versions('flax', 'jax', 'jaxlib'),
        'model': 'bonsai.models.qwen3.modeling.Qwen3 (GQA, q_norm/k_norm)'
        + (', tie_word_embeddings=True' if tied else ''),
        'config': dict(
          TINY_QWEN3,
          tie_word_embeddings=tied,
          shd_cfg=record_tree.jsonable(
            {
              k: getattr(config.shd_cfg, k)
              for k in config.shd_cfg.__dataclass_fields__
            }
          ),
        ),
        'tree_form': (
          'nnx.state(model, nnx.Param), what nnx.Optimizer(model, tx,'
          ' wrt=nnx.Param) passes to tx.init; Params carry out_sharding from'
          ' ShardConfig.default(use_fsdp=True, use_tp=True)'
        ),
        'adam_mini_kwargs': {'num_heads': 4, 'num_kv_heads': 2, 'head_dim': 12},
        'leaves': record_tree.record_leaves(
          state,
          is_wrapper=lambda x: isinstance(x, nnx.Variable),
          describe=record_tree.describe_nnx_variable,
        ),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('bonsai', build)
