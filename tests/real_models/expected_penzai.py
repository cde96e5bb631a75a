"""Expected Adam-mini blocks for penzai transformer trees.

Written from the Adam-mini rules (FIXTURES.md) and penzai's own layer
definitions, never from optax_adam_mini. Citations are to penzai 0.2.5.

Every leaf is the `data_array` of a pz.nx.NamedArray (positional axes first,
then the named axes in `named_axes` order, core/named_axes.py), so each axis
is found by its penzai name, recorded in the fixture's NamedArray wrapper.
The parameter's role comes from its label (v2: ParameterValue.label, e.g.
'transformer/block_0/attention/query.weights'; v1: the dict key, e.g.
'block_0.attn.query.weights'). The layouts, from the builders:

  embedder.embeddings  {vocabulary, embedding}    nn/embeddings.py
                       (tied with the logits when tie_embedder_and_logits)
  lm_head.weights      {embedding, vocabulary}    llamalike_common.py:511
  query                {embedding, <heads>, projection}, <heads> one of
                       {heads} (MHA), {query_heads} (MQA), {head_groups,
                       query_heads} (GQA)         llamalike_common.py:194-211,
                                                  :295-305
  key / value          {embedding, [heads|head_groups], projection}
                       (no head axis under MQA)   llamalike_common.py:315-336
  output               {<heads>, projection, embedding}, the
                       attn_value_to_output Linear (llamalike_common.py:339-)
  mlp gating_linear / value_linear {embedding, neurons}, out_linear
                       {neurons, embedding}       llamalike_common.py:159-191
  GPT-NeoX: query/key/value/output and mlp in/out are pz.nn.Affine, i.e.
                       '<name>/Linear.weights' plus '<name>/AddBias.bias'
                       over the output axes       gpt_neox.py:82-218
  */scale.weights, */shift.bias  RMSLayerNorm / LayerNorm over {embedding}
  use_layer_stack=True adds a leading {blocks} axis to every block parameter
                       (nn/layer_stack.py, stack_axis='blocks').
"""

from __future__ import annotations

import re

HEAD_AXES = ('heads', 'head_groups', 'query_heads')


def _named_array(leaf: dict) -> dict:
  for wrapper in leaf['wrappers']:
    if wrapper['type'] == 'penzai.NamedArray':
      return wrapper
  raise KeyError(f'no NamedArray wrapper on {leaf["path"]}')


def _label(leaf: dict) -> str:
  for wrapper in leaf['wrappers']:
    if wrapper['type'] == 'penzai.ParameterValue':
      return wrapper['label']
  # v1 dict form: the parameter name is the dict key above the NamedArray.
  keys = [k for kind, k in leaf['path'] if kind == 'dict']
  return str(keys[-1])


def _axes(leaf: dict):
  named = _named_array(leaf)
  offset = named['positional']
  names = list(named['named_axes'])
  return {name: offset + i for i, name in enumerate(names)}


def expected(fixture: dict, leaf: dict) -> dict:
  del fixture
  label = _label(leaf)
  parts = re.split(r'[/.]', label)
  axis = _axes(leaf)
  stacked = [axis['blocks']] if 'blocks' in axis else []

  def keep(*names):
    return sorted(stacked + [axis[n] for n in names if n in axis])

  if label.endswith('embedder.embeddings'):
    return {
      'keep': [axis['vocabulary']],
      'why': 'token embedding (tied or not): one v per vocabulary row',
    }
  if label.endswith('lm_head.weights'):
    return {'keep': [axis['vocabulary']], 'why': 'LM head: one v per token'}

  if parts[-1] == 'bias':
    # Linear biases and LayerNorm shifts alike: the reference (adam-mini
    # 1.1.1) gives every param whose name holds 'bias' plain Adam.
    return {'elementwise': True, 'why': 'bias (by name): plain Adam'}

  if any(p.endswith('norm') for p in parts) and parts[-2:] == [
    'scale',
    'weights',
  ]:
    return {
      'keep': keep(),
      'why': 'norm scale: one v per norm leaf (per block if stacked)',
    }

  if parts[-1] != 'weights':
    raise KeyError(f'no expectation written for penzai leaf {label}')
  role = parts[-3] if parts[-2] == 'Linear' else parts[-2]
  block = parts[-4] if parts[-2] == 'Linear' else parts[-3]

  if block in ('attention', 'attn'):
    if role == 'query':
      return {
        'keep': keep(*HEAD_AXES),
        'why': 'query: one v per query head (every head axis kept)',
      }
    if role == 'key':
      return {
        'keep': keep('heads', 'head_groups'),
        'why': 'key: one v per KV head (one per block under MQA)',
      }
    if role == 'value':
      return {
        'keep': keep('heads', 'head_groups', 'projection'),
        'why': 'value: one v per output neuron (every output axis)',
      }
    if role == 'output':
      return {
        'keep': keep('embedding'),
        'why': 'attention output: one v per output neuron (embedding)',
      }
  if block == 'mlp':
    if role in ('gating_linear', 'value_linear', 'in'):
      return {'keep': keep('neurons'), 'why': 'MLP in: one v per neuron'}
    if role in ('out_linear', 'out'):
      return {
        'keep': keep('embedding'),
        'why': 'MLP out: one v per output neuron (embedding)',
      }
  raise KeyError(f'no expectation written for penzai leaf {label}')
