"""Expected Adam-mini blocks for flax's examples/gemma NNX Transformer.

Its attention and MLP layouts are those of the Gemma models in tunix (same
einsum strings: `q_einsum` 'BTD,NDH->BTNH' (H, D, Dh), `kv_einsum`
'BSD,CKDH->CBSKH' (2, K, D, Dh), `qkv_einsum` 'BTD,SNDH->SBTNH' (3, H, D, Dh),
`attn_vec_einsum` 'BTNH,NHD->BTD' (H, Dh, D), in examples/gemma/modules.py),
held by `nnx.Einsum` (`kernel`) and `nnx.Embed` (`embedding`, (V, D), tied LM
head via `attend`); MLPs are `nnx.Linear` (in, out). So the rules are
expected_tunix's.
"""

try:
  from . import expected_tunix as _gemma_rules
except ImportError:
  import expected_tunix as _gemma_rules


def expected(fixture, leaf):
  return _gemma_rules.expected(fixture, leaf)
