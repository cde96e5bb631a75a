"""Expected Adam-mini blocks for the jax-ml/bonsai Qwen 3 fixture.

bonsai/models/qwen3/modeling.py has the layouts of tunix's Qwen 3: `q_proj`
nnx.Einsum 'BTD,DNH->BTNH' kernel (D, H, Dh), `k_proj`/`v_proj`
'BSD,DKH->BSKH' (D, K, Dh), `o_proj` 'BTNH,NHD->BTD' (H, Dh, D), `lm_head`
'BTD,DV->BTV' (D, V), `nnx.Embed` (V, D), nnx.Linear MLPs (in, out) and
nnx.RMSNorm scales (q_norm/k_norm over head_dim). So the rules are
expected_tunix's.
"""

try:
  from . import expected_tunix as _rules
except ImportError:
  import expected_tunix as _rules


def expected(fixture, leaf):
  return _rules.expected(fixture, leaf)
