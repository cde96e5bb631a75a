"""Expected Adam-mini blocks for the Levanter (haliax NamedArray) fixtures.

Written from the Adam-mini rules (FIXTURES.md) and marin-levanter's model code,
independently of the library's partition code. Every leaf is a haliax
NamedArray whose axis names the fixture records, so each rule names the axes
it keeps; which of a weight's axes are its outputs comes from the
`hnn.Linear.init(In=..., Out=...)` call that makes it:

- levanter/layers/attention.py `Attention.init`: `q_proj` Out=(kv_head,
  q_heads_per_group, head_size), `k_proj`/`v_proj` Out=(kv_head, head_size),
  `o_proj` In=(heads, head_size) Out=embed, all In=embed; a query head is one
  (kv_head, q_heads_per_group) pair.
- levanter/models/llama.py `LlamaMlp`: gate_proj/up_proj Out=mlp,
  down_proj Out=embed; `lm_head` Out=vocab; `hnn.Embedding` (vocab, embed).
- levanter/models/gpt2.py: `c_attn` In=embed Out=(qkv, heads, head_size)
  (qkv: 0 query, 1 key, 2 value), attn `c_proj` Out=embed, mlp `c_fc`
  Out=mlp and `c_proj` Out=embed; token and position embeddings.
- levanter/models/mixtral.py: router `gate` Linear(embed -> experts),
  experts `w1`/`w3` MoELinear(Experts, In=embed, Out=mlp), `w2` Out=embed.
- Stacked layers (`haliax.nn.Stacked`, scan_layers=True) add a leading
  `layer` / `layers` axis; experts an `experts` axis: both always kept.
"""

_LAYER_AXES = ('layer', 'layers')
_NORM_OWNERS = ('norm', 'ln_1', 'ln_2', 'ln_f')


def _axis_names(leaf):
  (wrapper,) = leaf['wrappers']
  return [name for name, _ in wrapper['axes']]


def _keep(axes, names, why):
  kept = [i for i, name in enumerate(axes) if name in names]
  return {'keep': kept, 'why': why}


def _stacked(axes):
  return [name for name in axes if name in _LAYER_AXES or name == 'experts']


def expected(fixture, leaf):
  names = [str(key) for _, key in leaf['path']]
  axes = _axis_names(leaf)
  field = names[-2]  # the NamedArray's attribute: weight / bias
  owner = names[-3]  # the module holding it
  kept = _stacked(axes)

  if field == 'bias':
    # Norm biases too: the reference gives every "bias" plain Adam.
    return {'elementwise': True, 'why': 'bias: plain Adam'}
  if any(n in owner for n in _NORM_OWNERS):
    return _keep(axes, kept, 'norm weight: one v per norm (per layer)')
  if owner in ('token_embeddings', 'position_embeddings', 'lm_head'):
    row = 'position' if owner == 'position_embeddings' else 'vocab'
    return _keep(axes, kept + [row], f'{owner}: one v per {row} row')
  if owner == 'q_proj':
    return _keep(
      axes,
      kept + ['kv_head', 'q_heads_per_group'],
      'query: one v per query head (kv_head, q_heads_per_group)',
    )
  if owner == 'k_proj':
    return _keep(axes, kept + ['kv_head'], 'key: one v per KV head')
  if owner == 'v_proj':
    return _keep(
      axes, kept + ['kv_head', 'head_size'], 'value: one v per output neuron'
    )
  if owner == 'c_attn':
    query = _keep(axes, kept + ['heads'], 'query third: one v per head')
    key = _keep(axes, kept + ['heads'], 'key third: one v per head')
    value = _keep(
      axes, kept + ['heads', 'head_size'], 'value third: one v per neuron'
    )
    qkv = axes.index('qkv')
    return {'parts': {'axis': qkv, 'specs': [[1, query], [1, key], [1, value]]}}
  if owner == 'gate' and 'experts' in axes:
    return _keep(axes, kept, 'router: one v per output neuron (expert)')
  outputs = {
    'o_proj': 'embed',
    'c_proj': 'embed',
    'down_proj': 'embed',
    'w2': 'embed',
    'gate_proj': 'mlp',
    'up_proj': 'mlp',
    'c_fc': 'mlp',
    'w1': 'mlp',
    'w3': 'mlp',
  }
  out = outputs[owner]
  return _keep(axes, kept + [out], f'{owner}: one v per output neuron ({out})')
