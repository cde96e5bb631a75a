"""Expected Adam-mini blocks for the Equinox fixtures.

Written from the Adam-mini rules (FIXTURES.md) and equinox 0.13.8's layouts,
independently of the library's partition code:

- `eqx.nn.Linear.weight` is (out_features, in_features) (`wshape =
  (out_features_, in_features_)` in equinox/nn/_linear.py), `bias` is
  (out_features,): output neurons on the first non-layer axis.
- `eqx.nn.MultiheadAttention` (equinox/nn/_attention.py): `query_proj` and
  `key_proj` are Linear(size, num_heads * qk_size), `value_proj`
  Linear(size, num_heads * vo_size), `output_proj` Linear(num_heads * vo_size,
  output_size); `_project` reshapes a projection's output to
  (seq, num_heads, -1), so heads are contiguous blocks of the out axis. It has
  no grouped KV heads: key_proj has num_heads heads.
- `eqx.nn.Embedding.weight` is (num_embeddings, embedding_size).
- `eqx.nn.LayerNorm` / `eqx.nn.RMSNorm` have `weight` and (by default) `bias`
  of the normalised shape.
- Blocks built by `eqx.filter_vmap` over init keys carry one leading layer
  axis on every leaf (the container path holds no list index for them).
"""


def expected(fixture, leaf):
  names = [str(key) for _, key in leaf['path']]
  field, module = names[-1], names[-2]
  owner = leaf['annotations']['containers'][-1]
  heads = fixture['adam_mini_kwargs']['num_heads']
  rank = len(leaf['shape'])
  if owner == 'Linear':
    stacked = rank == (3 if field == 'weight' else 2)
  else:
    stacked = rank == 2 and owner in ('LayerNorm', 'RMSNorm')
  layer = [0] if stacked else []
  out_axis = len(layer)

  if owner in ('LayerNorm', 'RMSNorm') and field == 'bias':
    return {'elementwise': True, 'why': 'norm bias: a bias, plain Adam'}
  if owner in ('LayerNorm', 'RMSNorm'):
    return {
      'keep': layer,
      'why': 'norm weight: one v per norm (per layer)',
    }
  if owner == 'Embedding':
    return {'keep': [0], 'why': 'embedding (rows, features): one v per row'}
  assert owner == 'Linear', names
  if field == 'bias':
    return {'elementwise': True, 'why': 'Linear bias: plain Adam'}
  if module in ('query_proj', 'key_proj'):
    return {
      'keep': layer,
      'split': {'axis': out_axis, 'heads': heads},
      'why': f'{module}: one v per head, heads contiguous on the out axis '
      '(Linear weight is (out, in))',
    }
  if module == 'unembed':
    return {'keep': layer + [out_axis], 'why': 'unembedding: one v per token'}
  return {
    'keep': layer + [out_axis],
    'why': f'{module}: one v per output neuron (Linear weight is (out, in))',
  }
