"""Expected Adam-mini blocks for google-deepmind `gemma` (gm.nn) trees.

Written from the Adam-mini rules (FIXTURES.md) and gemma's own einsums, never
from optax_adam_mini. File/line citations are to gemma 4.0.1
(gemma/gm/nn/...), the version in requirements/gemma.txt.

Every leaf of `model.init(...)['params']` (a plain dict) is one of:
  embedder/input_embedding  (V, D)       _modules.py:70, tied: encode reads
                                         rows, decode is x @ table.T (:112)
  */scale                   (D,) / (Dh,) _layers.py:35 RMSNorm, also the
                                         qk-norms attn/_query_norm, _key_norm
  attn/q_einsum/w           (H, D, Dh)   'BTD,NDH->BTNH'        _modules.py:189
  attn/kv_einsum/w          (2, K, D, Dh) 'BSD,CKDH->CBSKH', C=0 key, 1 value
                                                                _modules.py:190
  attn/qkv_einsum/w         (3, H, D, Dh) 'BTD,SNDH->SBTNH', S=q,k,v (used when
                                         num_kv_heads == num_heads, :137, :187)
  attn/attn_vec_einsum/w    (H, Dh, D)   'BTNH,NHD->BTD'        _modules.py:298
  mlp/gating_einsum   Gemma 2 (2, D, F)  '...F,NFH->...NH'      _modules.py:367
                      Gemma 3 (2, F, D)  '...F,NHF->...NH'      _modules.py:361
                      (N=0 gate, N=1 up; in these equations F is the model
                      width and H the hidden width)
  mlp/linear                (F, D)       '...H,HF->...F'        _modules.py:390
"""

from __future__ import annotations


def _path(leaf: dict) -> list[str]:
  return [str(k) for _, k in leaf['path']]


def expected(fixture: dict, leaf: dict) -> dict:
  names = _path(leaf)
  shape = leaf['shape']
  last = names[-1]
  parent = names[-2] if len(names) > 1 else ''
  cfg = fixture['config']

  if names[-2:] == ['embedder', 'input_embedding']:
    assert shape == [cfg['num_embed'], cfg['embed_dim']]
    return {
      'keep': [0],
      'why': 'token embedding, tied with the LM head: one v per token row',
    }

  if last == 'scale':
    assert len(shape) == 1
    return {'keep': [], 'why': 'norm scale: one v per norm leaf'}

  if parent == 'q_einsum' and last == 'w':
    assert shape == [cfg['num_heads'], cfg['embed_dim'], cfg['head_dim']]
    return {'keep': [0], 'why': 'query (H, D, Dh): one v per query head'}

  if parent == 'kv_einsum' and last == 'w':
    assert shape == [2, cfg['num_kv_heads'], cfg['embed_dim'], cfg['head_dim']]
    return {
      'parts': {
        'axis': 0,
        'specs': [
          [1, {'keep': [1]}],  # key: one v per KV head
          [1, {'keep': [1, 3]}],  # value: one v per output (K, Dh) neuron
        ],
      },
      'why': 'fused k|v on axis 0: key per KV head, value per output neuron',
    }

  if parent == 'qkv_einsum' and last == 'w':
    assert shape == [3, cfg['num_heads'], cfg['embed_dim'], cfg['head_dim']]
    return {
      'parts': {
        'axis': 0,
        'specs': [
          [1, {'keep': [1]}],  # query: one v per head
          [1, {'keep': [1]}],  # key: one v per head (MHA: K == H)
          [1, {'keep': [1, 3]}],  # value: one v per output (H, Dh) neuron
        ],
      },
      'why': 'fused q|k|v on axis 0: q, k per head, v per output neuron',
    }

  if parent == 'attn_vec_einsum' and last == 'w':
    assert shape == [cfg['num_heads'], cfg['head_dim'], cfg['embed_dim']]
    return {
      'keep': [2],
      'why': 'attention output (H, Dh, D): one v per output neuron (D)',
    }

  if last == 'gating_einsum':
    if cfg['transpose_gating_einsum']:
      assert shape == [2, cfg['hidden_dim'], cfg['embed_dim']]
      out_axis = 1
    else:
      assert shape == [2, cfg['embed_dim'], cfg['hidden_dim']]
      out_axis = 2
    return {
      'keep': [0, out_axis],
      'why': 'fused gate|up MLP: one v per output neuron of each projection',
    }

  if last == 'linear' and parent == 'mlp':
    assert shape == [cfg['hidden_dim'], cfg['embed_dim']]
    return {'keep': [1], 'why': 'MLP down (F, D): one v per output neuron'}

  raise KeyError(f'no expectation written for gemma leaf {"/".join(names)}')
