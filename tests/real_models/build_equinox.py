"""Fixtures: Equinox transformers, as `eqx.filter(model, eqx.is_array)`.

Runs in its own venv (requirements/equinox.txt). Two models built from
`equinox.nn` layers the way Equinox's own docs build them:

- `bert`: the structure of Equinox's BERT example (docs/examples/bert.ipynb):
  EmbedderBlock (token/segment/position `eqx.nn.Embedding` + LayerNorm),
  layers of AttentionBlock (`eqx.nn.MultiheadAttention` with all biases) and
  FeedForwardBlock (`mlp`/`output` `eqx.nn.Linear`), a `pooler` Linear and a
  `classifier_head` Linear. The layers are a Python list.
- `decoder_scanned`: a pre-norm causal decoder with `eqx.nn.RMSNorm`,
  `eqx.nn.MultiheadAttention` (qk_size/vo_size 12 != width/heads = 8) and an
  `eqx.nn.MLP` feed-forward, whose blocks are stacked by `eqx.filter_vmap` over
  the init keys (the "scan over layers" idiom of Equinox's docs/FAQ): every
  block leaf gets a leading layer axis. An `unembed` Linear (vocab, width).

Each is built with `eqx.filter_eval_shape`, so leaves are ShapeDtypeStructs;
the tree recorded is what `eqx.filter(model, eqx.is_array)` gives on the real
model (Module fields are GetAttrKeys, non-array fields become None, which
flatten to nothing; they are listed under "none_paths").

  /work/envs/equinox/bin/python tests/real_models/build_equinox.py
"""

import jax
import jax.numpy as jnp

try:
  from tests.real_models import record_tree
except ImportError:  # run as a script: this folder is on sys.path
  import record_tree

VOCAB = 64
WIDTH = 32
HEADS = 4
HEAD_DIM = 12
LAYERS = 2
MLP = 40
POSITIONS = 16


def _model_classes():
  """The two models' classes. Defined on call: pytest --doctest-modules
  imports this module where equinox is not installed."""
  import equinox as eqx  # noqa: PLC0415

  class EmbedderBlock(eqx.Module):
    token_embedder: eqx.nn.Embedding
    segment_embedder: eqx.nn.Embedding
    position_embedder: eqx.nn.Embedding
    layernorm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key):
      token_key, segment_key, position_key = jax.random.split(key, 3)
      self.token_embedder = eqx.nn.Embedding(VOCAB, WIDTH, key=token_key)
      self.segment_embedder = eqx.nn.Embedding(2, WIDTH, key=segment_key)
      self.position_embedder = eqx.nn.Embedding(
        POSITIONS, WIDTH, key=position_key
      )
      self.layernorm = eqx.nn.LayerNorm(WIDTH)
      self.dropout = eqx.nn.Dropout(0.1)

  class AttentionBlock(eqx.Module):
    attention: eqx.nn.MultiheadAttention
    layernorm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout
    num_heads: int = eqx.field(static=True)

    def __init__(self, key):
      self.num_heads = HEADS
      self.attention = eqx.nn.MultiheadAttention(
        num_heads=HEADS,
        query_size=WIDTH,
        use_query_bias=True,
        use_key_bias=True,
        use_value_bias=True,
        use_output_bias=True,
        dropout_p=0.1,
        key=key,
      )
      self.layernorm = eqx.nn.LayerNorm(WIDTH)
      self.dropout = eqx.nn.Dropout(0.1)

  class FeedForwardBlock(eqx.Module):
    mlp: eqx.nn.Linear
    output: eqx.nn.Linear
    layernorm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, key):
      mlp_key, output_key = jax.random.split(key)
      self.mlp = eqx.nn.Linear(WIDTH, MLP, key=mlp_key)
      self.output = eqx.nn.Linear(MLP, WIDTH, key=output_key)
      self.layernorm = eqx.nn.LayerNorm(WIDTH)
      self.dropout = eqx.nn.Dropout(0.1)

  class TransformerLayer(eqx.Module):
    attention_block: AttentionBlock
    ff_block: FeedForwardBlock

    def __init__(self, key):
      attention_key, ff_key = jax.random.split(key)
      self.attention_block = AttentionBlock(attention_key)
      self.ff_block = FeedForwardBlock(ff_key)

  class Encoder(eqx.Module):
    embedder_block: EmbedderBlock
    layers: list[TransformerLayer]
    pooler: eqx.nn.Linear

    def __init__(self, key):
      embedder_key, pooler_key, *layer_keys = jax.random.split(key, LAYERS + 2)
      self.embedder_block = EmbedderBlock(embedder_key)
      self.layers = [TransformerLayer(k) for k in layer_keys]
      self.pooler = eqx.nn.Linear(WIDTH, WIDTH, key=pooler_key)

  class BertClassifier(eqx.Module):
    encoder: Encoder
    classifier_head: eqx.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, key, num_classes=3):
      encoder_key, head_key = jax.random.split(key)
      self.encoder = Encoder(encoder_key)
      self.classifier_head = eqx.nn.Linear(WIDTH, num_classes, key=head_key)
      self.dropout = eqx.nn.Dropout(0.1)

  class DecoderBlock(eqx.Module):
    attention_norm: eqx.nn.RMSNorm
    attention: eqx.nn.MultiheadAttention
    mlp_norm: eqx.nn.RMSNorm
    mlp: eqx.nn.MLP

    def __init__(self, key):
      attention_key, mlp_key = jax.random.split(key)
      self.attention_norm = eqx.nn.RMSNorm(WIDTH)
      self.attention = eqx.nn.MultiheadAttention(
        num_heads=HEADS,
        query_size=WIDTH,
        qk_size=HEAD_DIM,
        vo_size=HEAD_DIM,
        key=attention_key,
      )
      self.mlp_norm = eqx.nn.RMSNorm(WIDTH)
      self.mlp = eqx.nn.MLP(
        WIDTH, WIDTH, MLP, depth=1, activation=jax.nn.gelu, key=mlp_key
      )

  class ScannedDecoder(eqx.Module):
    embedding: eqx.nn.Embedding
    blocks: DecoderBlock
    final_norm: eqx.nn.RMSNorm
    unembed: eqx.nn.Linear

    def __init__(self, key):
      embed_key, unembed_key, block_key = jax.random.split(key, 3)
      self.embedding = eqx.nn.Embedding(VOCAB, WIDTH, key=embed_key)
      make_blocks = eqx.filter_vmap(DecoderBlock)
      self.blocks = make_blocks(jax.random.split(block_key, LAYERS))
      self.final_norm = eqx.nn.RMSNorm(WIDTH)
      self.unembed = eqx.nn.Linear(
        WIDTH, VOCAB, use_bias=False, key=unembed_key
      )

  return BertClassifier, ScannedDecoder


def _is_array_like(x):
  import equinox as eqx  # noqa: PLC0415

  # eqx.is_array on the real model; its abstract leaves are ShapeDtypeStructs.
  return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _none_paths(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(
    tree, is_leaf=lambda x: x is None
  )
  return [
    [record_tree.key_entry(k) for k in path] for path, x in flat if x is None
  ]


def _containers(model):
  """Annotates each leaf with the Python types along its path."""

  def annotate(keys, _):
    types, node = [], model
    for key in keys:
      types.append(type(node).__name__)
      if isinstance(key, jax.tree_util.GetAttrKey):
        node = getattr(node, key.name)
      else:
        node = node[key.idx]
    return {'containers': types}

  return annotate


def _models():
  bert, decoder = _model_classes()
  return {
    'bert': (
      bert,
      "BERT classifier in the structure of Equinox's BERT example",
      {'num_heads': HEADS, 'num_kv_heads': HEADS, 'head_dim': WIDTH // HEADS},
    ),
    'decoder_scanned': (
      decoder,
      'pre-RMSNorm causal decoder, blocks stacked by eqx.filter_vmap (layer '
      'axis 0 on every block leaf), qk_size = vo_size = 12',
      {'num_heads': HEADS, 'num_kv_heads': HEADS, 'head_dim': HEAD_DIM},
    ),
  }


def build():
  import equinox as eqx  # noqa: PLC0415

  fixtures = []
  for name, (module, description, heads) in _models().items():
    model = eqx.filter_eval_shape(module, jax.random.key(0))
    params = eqx.filter(model, _is_array_like)
    fixtures.append(
      {
        'name': name,
        'library': 'equinox',
        'library_version': eqx.__version__,
        'python': record_tree.python_version(),
        'versions': record_tree.versions('equinox', 'jax', 'jaxlib'),
        'model': description,
        'config': {
          'vocab': VOCAB,
          'width': WIDTH,
          'heads': HEADS,
          'layers': LAYERS,
          'mlp': MLP,
          'positions': POSITIONS,
          'qk_size': heads['head_dim'],
          'vo_size': heads['head_dim'],
          'dtype': str(jnp.dtype(jnp.float32)),
        },
        'tree_form': (
          'eqx.filter(model, eqx.is_array): the model Module itself with every'
          ' non-array field replaced by None, as Equinox examples pass to'
          ' optim.init; Module fields are GetAttrKeys, lists SequenceKeys'
        ),
        'adam_mini_kwargs': heads,
        'none_paths': _none_paths(params),
        'leaves': record_tree.record_leaves(
          params, annotate=_containers(params)
        ),
      }
    )
  return fixtures


if __name__ == '__main__':
  record_tree.main('equinox', build)
