"""Expected Adam-mini blocks for the HF `transformers` 4.x Flax fixtures.

Written from the Adam-mini rules (FIXTURES.md) and the layouts in
transformers 4.57.6's modeling_flax_*.py, independently of the library's
partition code. The layouts that decide the axes:

- `flax.linen.Dense` kernels are (in, out) (`kernel` shape
  `(inputs.shape[-1], features)` in flax/linen/linear.py), so every HF Flax
  Dense has its output neurons on axis 1.
- GPT-2's `FlaxConv1D` (models/gpt2/modeling_flax_gpt2.py) stores its kernel
  `(self.features, inputs.shape[-1])`, i.e. (out, in), and multiplies by
  `kernel.transpose()`: output neurons on axis 0.
- GPT-2 `attn/c_attn` is q|k|v on the output axis: `jnp.split(qkv_out, 3,
  axis=2)`, each then reshaped `(num_heads, head_dim)` by `_split_heads`; the
  cross-attention `c_attn` is k|v (`jnp.split(kv_out, 2, axis=2)`) next to a
  separate `q_attn`.
- Bloom `self_attention/query_key_value` (models/bloom/modeling_flax_bloom.py)
  is reshaped `(num_heads, head_dim * 3)` and then split q, k, v inside each
  head: the output axis runs head 0 [q k v], head 1 [q k v], ... (interleaved).
- Llama/Mistral/Gemma `k_proj`/`v_proj` have `num_key_value_heads * head_dim`
  outputs (GQA); Gemma's `head_dim` comes from its config, T5's is `d_kv`.
- `nn.Embed.embedding` is (vocab, features); tied LM heads reuse it and have
  no leaf of their own; untied `lm_head` is a Dense (features, vocab).
"""

ELEMENTWISE = {'elementwise': True, 'why': 'bias of a linear layer: plain Adam'}

_QUERY_NAMES = {'q_proj', 'query', 'q', 'q_attn'}
_KEY_NAMES = {'k_proj', 'key', 'k'}
_VALUE_NAMES = {'v_proj', 'value', 'v'}
_NORM_NAMES = {'ln_1', 'ln_2', 'ln_f', 'ln_cross_attn'}


def _is_norm(name):
  return name in _NORM_NAMES or 'norm' in name.lower()


def _heads(axis, count, why):
  return {'keep': [], 'split': {'axis': axis, 'heads': count}, 'why': why}


def _per_output(axis, why='dense kernel: one v per output neuron'):
  return {'keep': [axis], 'why': why}


def _gpt2_conv1d(names, heads):
  """FlaxConv1D kernels, (out, in): outputs on axis 0."""
  layer, width = names[-2], heads['num_heads'] * heads['head_dim']
  query = _heads(
    0, heads['num_heads'], 'query: one v per head (Conv1D out axis 0)'
  )
  key = _heads(
    0, heads['num_kv_heads'], 'key: one v per head (Conv1D out axis 0)'
  )
  value = _per_output(0, 'value: one v per output neuron (Conv1D out axis 0)')
  if layer == 'c_attn' and names[-3] == 'crossattention':
    return {'parts': {'axis': 0, 'specs': [[width, key], [width, value]]}}
  if layer == 'c_attn':
    return {
      'parts': {
        'axis': 0,
        'specs': [[width, query], [width, key], [width, value]],
      }
    }
  if layer == 'q_attn':
    return query
  # attn/c_proj, crossattention/c_proj, mlp/c_fc, mlp/c_proj.
  return _per_output(0, 'Conv1D (out, in) kernel: one v per output neuron')


def _bloom_fused_qkv(heads):
  """Bloom query_key_value (D, H * 3 * Dh): per head [q | k | v], interleaved."""
  head_dim = heads['head_dim']
  one_head = [
    [head_dim, {'keep': [], 'why': 'query of one head: one v'}],
    [head_dim, {'keep': [], 'why': 'key of one head: one v'}],
    [head_dim, _per_output(1, 'value: one v per output neuron')],
  ]
  return {'parts': {'axis': 1, 'specs': one_head * heads['num_heads']}}


def expected(fixture, leaf):
  names = [str(key) for _, key in leaf['path']]
  last, parent = names[-1], names[-2] if len(names) > 1 else ''
  heads = fixture['adam_mini_kwargs']
  conv1d = fixture['model'].startswith('FlaxGPT2')

  if last == 'final_logits_bias':
    return dict(ELEMENTWISE, why='bias added to the logits: plain Adam')
  if _is_norm(parent) and last == 'bias':
    return dict(ELEMENTWISE, why='norm bias: a bias, plain Adam (reference)')
  if _is_norm(parent):
    return {'keep': [], 'why': 'norm scale: one v per norm leaf'}
  if last == 'bias' and parent == 'predictions':
    return dict(ELEMENTWISE, why='bias of the tied MLM decoder: plain Adam')
  if last == 'bias':
    return ELEMENTWISE
  if last == 'embedding' and parent == 'relative_attention_bias':
    return {
      'keep': [0],
      'why': 'T5 relative position bias table (buckets, heads): a position '
      'embedding, one v per position bucket',
    }
  if last == 'embedding':
    return {
      'keep': [0],
      'why': 'embedding table (rows, features): one v per token / position',
    }
  assert last == 'kernel', names
  if parent == 'lm_head':
    return _per_output(1, 'LM head Dense (features, vocab): one v per token')
  if conv1d:
    return _gpt2_conv1d(names, heads)
  if parent == 'query_key_value':
    return _bloom_fused_qkv(heads)
  # flax.linen.Dense, (in, out).
  if parent in _QUERY_NAMES:
    return _heads(
      1, heads['num_heads'], 'query: one v per head (Dense out axis 1)'
    )
  if parent in _KEY_NAMES:
    return _heads(
      1, heads['num_kv_heads'], 'key: one v per (KV) head (Dense out axis 1)'
    )
  if parent in _VALUE_NAMES:
    return _per_output(1, 'value: one v per output neuron')
  return _per_output(1)
