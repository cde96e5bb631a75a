"""Fixtures from penzai (PyPI `penzai`), its transformer models.

Run in /work/envs/penzai (requirements/penzai.txt):
  python tests/real_models/make_fixtures.py penzai

Tree forms, exactly as penzai's training helpers hand them to optax:

- v2 (penzai.toolshed.basic_training.StatefulTrainer, penzai 0.2.5
  toolshed/basic_training.py:190-191): `_, params = pz.unbind_params(model)`
  then `optimizer_def.init(pz.freeze_params(params))`: a tuple of
  pz.ParameterValue (fields value/label/metadata), each value a
  pz.nx.NamedArray whose `data_array` is the array. `step` later calls
  `optimizer_def.update(grads, opt_state, trainable_params)` on the same kind
  of tuple (:133, :242), holding the trainable parameters only.
- v1 (penzai.deprecated.v1.toolshed.basic_training.TrainState.initial_state,
  deprecated/v1/toolshed/basic_training.py:95-102): a dict
  {parameter name: parameter value} (the value a NamedArray).

The trees come from penzai's own builders
(models/transformer/variants/llamalike_common.build_llamalike_transformer for
llama/mistral/gemma, gpt_neox.build_gpt_neox_transformer), run through a
recording optimizer inside `jax.eval_shape`: StatefulTrainer.build itself
calls the recorder's init, so the fixture is what a real optax optimizer sees.
"""

from __future__ import annotations

import sys

try:  # as tests.real_models.<module> (pytest's doctest collection)
  from . import fixture_util
except ImportError:  # as a script's sibling (make_fixtures.py)
  import fixture_util

VOCAB = 64
EMBED = 32
HIDDEN = 48
PROJ = 12  # projection_dim != embedding_dim / num_heads (32 / 4 = 8)
BLOCKS = 2

VERSIONS = ('penzai', 'jax', 'jaxlib', 'treescope', 'optax', 'numpy')


def _describe(node):
  from penzai import pz

  if isinstance(node, pz.nx.NamedArray):
    return {
      'type': 'penzai.NamedArray',
      'named_axes': dict(node.named_axes),
      'positional': len(node.positional_shape),
    }
  if isinstance(node, pz.nx.NamedArrayView):
    return {
      'type': 'penzai.NamedArrayView',
      'data_shape': list(node.data_shape),
      'data_axis_for_logical_axis': list(node.data_axis_for_logical_axis),
      'data_axis_for_name': dict(node.data_axis_for_name),
    }
  if isinstance(node, pz.ParameterValue):
    return {
      'type': 'penzai.ParameterValue',
      'label': str(node.label),
      'metadata': {str(k): repr(v) for k, v in node.metadata.items()},
    }
  if type(node).__module__.startswith('penzai') and hasattr(node, 'value'):
    raise TypeError(f'unrecorded penzai node {type(node).__name__}')
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


def _v2_tree(build_model):
  """What StatefulTrainer.build hands to optimizer_def.init."""
  import jax
  from penzai.toolshed import basic_training

  tx, seen = _recorder()

  def run(key):
    model = build_model(key)
    basic_training.StatefulTrainer.build(
      root_rng=key,
      model=model,
      optimizer_def=tx,
      loss_fn=lambda **kwargs: None,
      jit=False,
    )
    return seen.pop('tree')

  return jax.eval_shape(run, jax.random.key(0))


def _fixture(name, model, note, config, tree_form, tree, kwargs):
  vers = fixture_util.versions(*VERSIONS)
  return {
    'name': name,
    'library': 'penzai',
    'library_version': vers['penzai'],
    'python': fixture_util.python_version(),
    'versions': vers,
    'model': f'{model}: {note}',
    'config': config,
    'tree_form': tree_form,
    'adam_mini_kwargs': kwargs,
    'leaves': fixture_util.leaf_records(tree, _describe),
  }


V2_FORM = (
  'tuple of pz.ParameterValue(value=pz.nx.NamedArray, label, metadata): '
  'pz.freeze_params(pz.unbind_params(model)[1]), what '
  'penzai.toolshed.basic_training.StatefulTrainer.build hands to '
  'optimizer_def.init'
)


def _llamalike(name, note, *, kv, mult, stack, **extra):
  import jax.numpy as jnp
  from penzai.models.transformer.variants import llamalike_common as lc

  fields = dict(
    num_kv_heads=kv,
    query_head_multiplier=mult,
    embedding_dim=EMBED,
    projection_dim=PROJ,
    mlp_hidden_dim=HIDDEN,
    num_decoder_blocks=BLOCKS,
    vocab_size=VOCAB,
    mlp_variant='swiglu',
    tie_embedder_and_logits=False,
    use_layer_stack=stack,
    parameter_dtype=jnp.float32,
  )
  fields.update(extra)
  cfg = lc.LlamalikeTransformerConfig(**fields)
  tree = _v2_tree(
    lambda key: lc.build_llamalike_transformer(cfg, init_base_rng=key)
  )
  record = {
    k: (v if isinstance(v, (int, float, str, bool)) or v is None else repr(v))
    for k, v in fields.items()
  }
  record['builder'] = 'llamalike_common.build_llamalike_transformer'
  return _fixture(
    name,
    'penzai llamalike',
    note,
    record,
    V2_FORM,
    tree,
    {'num_heads': kv * mult, 'num_kv_heads': kv, 'head_dim': PROJ},
  )


def _gemma_kwargs(preset):
  """Gemma preset flags (variants/gemma.py _GEMMA_PRESETS), tiny sizes."""
  from penzai.models.transformer.variants import gemma

  flags = dict(gemma._GEMMA_PRESETS[preset])
  for key in (
    'num_decoder_blocks',
    'vocab_size',
    'num_kv_heads',
    'query_head_multiplier',
    'embedding_dim',
    'projection_dim',
    'mlp_hidden_dim',
    'query_scaling_factor',
  ):
    flags.pop(key, None)
  # As gemma_from_pretrained_checkpoint builds it (variants/gemma.py:178).
  flags.update(
    mlp_variant='geglu_approx',
    tie_embedder_and_logits=True,
    rope_wavelength=1e4,
  )
  return flags


def _gpt_neox(name, stack):
  import jax.numpy as jnp
  from penzai.models.transformer.variants import gpt_neox

  fields = dict(
    num_attention_heads=4,
    embedding_dim=EMBED,
    projection_dim=PROJ,
    mlp_hidden_dim=HIDDEN,
    num_decoder_blocks=BLOCKS,
    vocab_size=VOCAB,
    activation_fn='gelu_exact',
    rope_subset_size=4,
    rope_wavelength=1e4,
    layernorm_epsilon=1e-5,
    parameter_dtype=jnp.float32,
    activation_dtype=jnp.float32,
    use_layer_stack=stack,
  )
  cfg = gpt_neox.GPTNeoXTransformerConfig(**fields)
  tree = _v2_tree(
    lambda key: gpt_neox.build_gpt_neox_transformer(cfg, init_base_rng=key)
  )
  record = {
    k: (v if isinstance(v, (int, float, str, bool)) else repr(v))
    for k, v in fields.items()
  }
  record['builder'] = 'gpt_neox.build_gpt_neox_transformer'
  return _fixture(
    name,
    'penzai GPT-NeoX',
    'MHA 4 heads, Affine (weights + bias) projections, LayerNorm '
    f'scale + shift{", LayerStack" if stack else ""}',
    record,
    V2_FORM,
    tree,
    {'num_heads': 4, 'num_kv_heads': 4, 'head_dim': PROJ},
  )


def _v1_gemma():
  """The deprecated v1 Gemma example model, v1 TrainState's dict form."""
  import jax
  from penzai.deprecated.v1 import pz as pz1
  from penzai.deprecated.v1.example_models.gemma import model_core

  cfg = model_core.GemmaTransformerConfig(
    num_heads=4,
    embedding_dim=EMBED,
    projection_dim=PROJ,
    single_kv_head=False,
    mlp_hidden_dim=HIDDEN,
    num_decoder_blocks=BLOCKS,
    vocab_size=VOCAB,
    parameter_dtype=jax.numpy.float32,
    activation_dtype=jax.numpy.float32,
  )

  def run(key):
    model = model_core.GemmaTransformer.from_config(cfg)
    model = pz1.nn.initialize_parameters(model, key)  # nn/parameters.py:636
    # deprecated/v1/toolshed/basic_training.py:95-102
    selection = pz1.select(model).at_instances_of(pz1.nn.Parameter)
    return {p.name: p.value for p in selection.get_sequence()}

  tree = jax.eval_shape(run, jax.random.key(0))
  return _fixture(
    'v1_gemma_mha',
    'penzai v1 (deprecated) Gemma example model',
    'MHA 4 heads, dict {name: NamedArray} as v1 TrainState.initial_state '
    'hands it to optimizer_def.init',
    {
      'builder': 'deprecated.v1.example_models.gemma.model_core',
      'num_heads': 4,
      'embedding_dim': EMBED,
      'projection_dim': PROJ,
      'single_kv_head': False,
      'mlp_hidden_dim': HIDDEN,
      'num_decoder_blocks': BLOCKS,
      'vocab_size': VOCAB,
    },
    'dict {parameter name: pz.nx.NamedArray}: what '
    'penzai.deprecated.v1.toolshed.basic_training.TrainState.initial_state '
    'hands to optimizer_def.init',
    tree,
    {'num_heads': 4, 'num_kv_heads': 4, 'head_dim': PROJ},
  )


def build() -> list[dict]:
  from penzai.models.transformer.variants import llamalike_common as lc

  jobs = [
    lambda: _llamalike(
      'llama_gqa',
      'GQA 2 KV heads x 2 (head_groups, query_heads axes)',
      kv=2,
      mult=2,
      stack=False,
    ),
    lambda: _llamalike(
      'llama_gqa_layerstack',
      'GQA 2x2, use_layer_stack=True (every leaf has a "blocks" axis)',
      kv=2,
      mult=2,
      stack=True,
    ),
    lambda: _llamalike(
      'llama_mha',
      'MHA 4 heads (query_head_multiplier=1: "heads" axis)',
      kv=4,
      mult=1,
      stack=False,
    ),
    lambda: _llamalike(
      'llama_mqa',
      'MQA 1 KV head x 4 (query_heads axis; key/value have no head axis)',
      kv=1,
      mult=4,
      stack=False,
    ),
    lambda: _llamalike(
      'mistral_gqa',
      'mistral: GQA 2x2 with sliding-window attention (as '
      'mistral_from_huggingface_model builds it)',
      kv=2,
      mult=2,
      stack=False,
      attention_type=lc.AttentionTypeSlidingWindowCausal(4),
    ),
    lambda: _llamalike(
      'gemma_mqa',
      'gemma_2b preset flags: MQA 1x4, tied embedding, geglu',
      kv=1,
      mult=4,
      stack=False,
      **_gemma_kwargs('gemma_2b'),
    ),
    lambda: _llamalike(
      'gemma2_gqa',
      'gemma2_2b preset flags: GQA 2x2, post-norms, softcaps, tied',
      kv=2,
      mult=2,
      stack=False,
      **_gemma_kwargs('gemma2_2b'),
    ),
    lambda: _llamalike(
      'gemma2_gqa_layerstack',
      'gemma2 flags with use_layer_stack=True and one attention type',
      kv=2,
      mult=2,
      stack=True,
      **{
        **_gemma_kwargs('gemma2_2b'),
        'attention_type': lc.AttentionTypeGlobalCausal(),
      },
    ),
    lambda: _gpt_neox('gpt_neox_mha', stack=False),
    lambda: _gpt_neox('gpt_neox_mha_layerstack', stack=True),
    _v1_gemma,
  ]
  fixtures = []
  for job in jobs:
    try:
      fixtures.append(job())
      print(f'built {fixtures[-1]["name"]}', file=sys.stderr)
    except Exception as e:  # noqa: BLE001 -- report every model's failure
      print(f'FAILED: {type(e).__name__}: {e}', file=sys.stderr)
  return fixtures
