"""Fixtures: Levanter (marin-levanter) models: haliax NamedArrays, as Levanter's trainer inits optax.

Runs in its own venv (requirements/levanter.txt). `TrainerState.init` calls
`init_optimizer_for_trainables(optimizer, trainables_only(model,
is_trainable))`, which hands `optimizer.init` the trainable half of
`partition_for_grad_overwrite(...)`: the model's eqx Modules (GetAttrKeys)
with haliax `NamedArray` leaves (each flattens to its `array` under
GetAttrKey('array') and keeps its axis names) and None for everything else.
That exact tree is captured here by running those two Levanter functions with
an optimizer whose `init` records its argument. Models come from each
config's own `build(Vocab, key=...)` under `eqx.filter_eval_shape`, tiny
sizes, `scan_layers=True` (Levanter's default: `haliax.nn.Stacked`, a leading
`layer` axis on every block leaf); GQA 4/2 with head_dim 12 where allowed.

  /work/envs/levanter/bin/python tests/real_models/build_levanter.py
"""

import dataclasses
from importlib import metadata

import jax

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

VOCAB_SIZE = 64
LAYERS = 2

_LLAMA_LIKE = dict(
  max_seq_len=16,
  hidden_dim=32,
  intermediate_dim=40,
  num_layers=LAYERS,
  num_heads=4,
  num_kv_heads=2,
  head_dim=12,
)
_GQA = {'num_heads': 4, 'num_kv_heads': 2, 'head_dim': 12}
# Levanter's Gemma, Gemma 3, Mixtral and OLMo 2 attention configs take the head
# size from width / heads (their attention_config() passes no head_dim), so
# these are built with head_dim = 32 / 4 = 8, the size their weights get.
_WIDTH_HEADS = dict(_LLAMA_LIKE, head_dim=8)
_GQA_8 = dict(_GQA, head_dim=8)


def _models():
  """(name, config, adam-mini head counts)."""
  # Levanter imports live in the functions: pytest --doctest-modules imports
  # this module where Levanter is not installed.
  from levanter.models import (  # noqa: PLC0415
    gemma,
    gpt2,
    llama,
    mistral,
    mixtral,
    olmo,
    qwen,
  )

  return [
    (
      'gpt2',
      gpt2.Gpt2Config(
        max_seq_len=16, hidden_dim=32, num_layers=LAYERS, num_heads=4
      ),
      {'num_heads': 4, 'num_kv_heads': 4, 'head_dim': 8},
    ),
    ('llama', llama.LlamaConfig(**_LLAMA_LIKE), _GQA),
    (
      'llama_unscanned',
      llama.LlamaConfig(**_LLAMA_LIKE, scan_layers=False),
      _GQA,
    ),
    ('mistral', mistral.MistralConfig(**_LLAMA_LIKE), _GQA),
    ('qwen3', qwen.Qwen3Config(**_LLAMA_LIKE), _GQA),
    (
      'olmo2',
      olmo.Olmo2Config(
        **{k: v for k, v in _LLAMA_LIKE.items() if k != 'head_dim'}
      ),
      _GQA_8,
    ),
    (
      'gemma',
      gemma.GemmaConfig(**_WIDTH_HEADS, vocab_size=VOCAB_SIZE),
      _GQA_8,
    ),
    (
      'gemma3',
      gemma.Gemma3Config(**_WIDTH_HEADS, vocab_size=VOCAB_SIZE),
      _GQA_8,
    ),
    (
      'mixtral',
      mixtral.MixtralConfig(
        **_WIDTH_HEADS, num_experts_per_tok=2, n_routed_experts=4
      ),
      _GQA_8,
    ),
  ]


class _RecordingOptimizer:
  """Stands in for the optax optimizer: keeps what `init` is handed."""

  def init(self, params):
    self.params = params
    return None


def _optimizer_init_tree(model):
  from levanter import trainer_state  # noqa: PLC0415

  trainable = trainer_state.trainables_only(model, True)
  recorder = _RecordingOptimizer()
  trainer_state.init_optimizer_for_trainables(recorder, trainable)
  return recorder.params


def _describe(named):
  return {
    'type': 'haliax.NamedArray',
    'axes': [
      [name, size] for name, size in zip(named.axis_names, named.array.shape)
    ],
  }


def build():
  import equinox as eqx  # noqa: PLC0415
  import haliax  # noqa: PLC0415

  vocab = haliax.Axis('vocab', VOCAB_SIZE)
  fixtures = []
  for name, config, heads in _models():
    model = eqx.filter_eval_shape(
      lambda cfg=config: cfg.build(vocab, key=jax.random.key(0))
    )
    tree = _optimizer_init_tree(model)
    fixtures.append(
      {
        'name': name,
        'library': 'levanter',
        'library_version': metadata.version('marin-levanter'),
        'python': record_tree.python_version(),
        'versions': record_tree.versions(
          'marin-levanter', 'marin-haliax', 'equinox', 'jax', 'jaxlib'
        ),
        'model': f'{type(model).__module__}.{type(model).__name__}',
        'config': dict(
          {
            f.name: record_tree.jsonable(getattr(config, f.name))
            for f in dataclasses.fields(config)
          },
          vocab=VOCAB_SIZE,
        ),
        'tree_form': (
          "the trainable tree Levanter's TrainerState.init hands optimizer.init"
          ' (init_optimizer_for_trainables(trainables_only(model, True))): eqx'
          ' Modules with haliax NamedArray leaves (axis names kept), None'
          ' elsewhere'
        ),
        'adam_mini_kwargs': heads,
        'leaves': record_tree.record_leaves(
          tree,
          is_wrapper=lambda x: isinstance(x, haliax.NamedArray),
          describe=_describe,
        ),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('levanter', build)
