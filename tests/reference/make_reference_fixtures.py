"""Generate reference-parity fixtures from the PyTorch reference Adam-mini.

The reference is the PyPI package ``adam-mini`` (version 1.1.1), class
``adam_mini.Adam_mini``.  This script is only needed to (re)generate the
fixture file; the parity tests themselves need nothing but numpy and our
package.  Requirements for running it::

    pip install torch==2.13.0
    pip install adam-mini==1.1.1 --no-deps
    python -m tests.reference.make_reference_fixtures   # from the repo root

What it does
------------
* builds the parameters of a tiny Llama-style model in torch layout with the
  Hugging Face parameter names (``model.layers.0.self_attn.q_proj.weight`` ...),
* computes *real* gradients: the cross-entropy loss of a fixed random token
  batch through a minimal hand-written Llama forward pass (RMSNorm, grouped
  query attention without rotary embeddings, SwiGLU MLP, untied lm_head),
* runs the reference optimizer for ``NUM_STEPS`` steps and records the
  gradient fed at every step and the parameters after every step.

Two trajectories are recorded:

``neuron``
    the reference as shipped (one second-moment scalar per output neuron of
    ``v_proj``).
``whole``
    the reference with ``optimizer.wv_names = set()``, so that ``v_proj``
    falls through to the "other blocks" branch and gets one scalar for the
    whole tensor (our ``value_blocks='whole'``).  It is fed the *same* recorded
    gradients as ``neuron``; since the reference treats every tensor
    independently, all leaves other than ``v_proj`` then follow bitwise the
    same trajectory (checked here), so only the ``v_proj`` leaves are stored.

To keep the file small (< 1 MB) the gradients are rounded to bfloat16
precision *before* they are fed to the reference, so they can be stored
losslessly in 16 bits.  Parameters are stored as exact float32.  The file
format (packed, byte-shuffled, lossless) is described and implemented in
``fixture_io.py`` (numpy only); use ``fixture_io.load_fixture`` to read it.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import numpy as np

from . import fixture_io

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # pragma: no cover
  # Only generating needs torch; this keeps the module importable (pytest
  # --doctest-modules collects it) on machines without torch.
  torch = F = None

# ----------------------------------------------------------------------------
# Model / optimizer configuration
# ----------------------------------------------------------------------------
VOCAB = 40
DIM = 32
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = DIM // N_HEADS  # 8
FFN = 48
N_LAYERS = 2
RMS_EPS = 1e-6

BATCH = 4
SEQ = 12

NUM_STEPS = 10
HPARAMS = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

FIXTURE_SEED = 0
_HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_DIR = os.path.join(_HERE, 'fixtures')
FIXTURE_PATH = os.path.join(FIXTURE_DIR, 'adam_mini_llama_reference.npz')


# ----------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------
def param_shapes() -> OrderedDict[str, tuple[int, ...]]:
  """Torch-layout shapes (Linear weights are (out, in)) in HF naming/order."""
  shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
  shapes['model.embed_tokens.weight'] = (VOCAB, DIM)
  for i in range(N_LAYERS):
    p = f'model.layers.{i}.'
    shapes[p + 'self_attn.q_proj.weight'] = (N_HEADS * HEAD_DIM, DIM)
    shapes[p + 'self_attn.k_proj.weight'] = (N_KV_HEADS * HEAD_DIM, DIM)
    shapes[p + 'self_attn.v_proj.weight'] = (N_KV_HEADS * HEAD_DIM, DIM)
    shapes[p + 'self_attn.o_proj.weight'] = (DIM, N_HEADS * HEAD_DIM)
    shapes[p + 'mlp.gate_proj.weight'] = (FFN, DIM)
    shapes[p + 'mlp.up_proj.weight'] = (FFN, DIM)
    shapes[p + 'mlp.down_proj.weight'] = (DIM, FFN)
    shapes[p + 'input_layernorm.weight'] = (DIM,)
    shapes[p + 'post_attention_layernorm.weight'] = (DIM,)
  shapes['model.norm.weight'] = (DIM,)
  shapes['lm_head.weight'] = (VOCAB, DIM)
  return shapes


def init_params(seed: int) -> OrderedDict[str, torch.Tensor]:
  """Seeded float32 initial parameters.

  Matrices get N(0, s^2) with a per-tensor std ``s`` that differs between
  tensors; norm scales are 1 + small noise, so that nothing is degenerate.
  """
  gen = torch.Generator().manual_seed(seed)
  out: OrderedDict[str, torch.Tensor] = OrderedDict()
  for k, (name, shape) in enumerate(param_shapes().items()):
    if len(shape) == 1:
      t = 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float32)
    else:
      std = 0.02 * (1.0 + 0.25 * (k % 5))
      t = std * torch.randn(shape, generator=gen, dtype=torch.float32)
    out[name] = t
  return out


def make_tokens(seed: int) -> torch.Tensor:
  gen = torch.Generator().manual_seed(seed + 1000)
  return torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)


# ----------------------------------------------------------------------------
# Minimal Llama forward (torch layout: y = x @ W.T)
# ----------------------------------------------------------------------------
def _rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
  var = x.pow(2).mean(-1, keepdim=True)
  return x * torch.rsqrt(var + RMS_EPS) * w


def llama_loss(
  params: dict[str, torch.Tensor], tokens: torch.Tensor
) -> torch.Tensor:
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  b, s = inputs.shape
  x = params['model.embed_tokens.weight'][inputs]  # (B, S, D)
  causal = torch.ones(s, s, dtype=torch.bool).tril()
  rep = N_HEADS // N_KV_HEADS
  for i in range(N_LAYERS):
    p = f'model.layers.{i}.'
    h = _rms_norm(x, params[p + 'input_layernorm.weight'])
    q = (h @ params[p + 'self_attn.q_proj.weight'].T).view(
      b, s, N_HEADS, HEAD_DIM
    )
    k = (h @ params[p + 'self_attn.k_proj.weight'].T).view(
      b, s, N_KV_HEADS, HEAD_DIM
    )
    v = (h @ params[p + 'self_attn.v_proj.weight'].T).view(
      b, s, N_KV_HEADS, HEAD_DIM
    )
    q = q.transpose(1, 2)  # (B, H, S, Dh)
    k = k.transpose(1, 2).repeat_interleave(rep, dim=1)
    v = v.transpose(1, 2).repeat_interleave(rep, dim=1)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
    att = att.masked_fill(~causal, float('-inf')).softmax(-1)
    o = (att @ v).transpose(1, 2).reshape(b, s, N_HEADS * HEAD_DIM)
    x = x + o @ params[p + 'self_attn.o_proj.weight'].T
    h = _rms_norm(x, params[p + 'post_attention_layernorm.weight'])
    g = h @ params[p + 'mlp.gate_proj.weight'].T
    u = h @ params[p + 'mlp.up_proj.weight'].T
    x = x + (F.silu(g) * u) @ params[p + 'mlp.down_proj.weight'].T
  x = _rms_norm(x, params['model.norm.weight'])
  logits = x @ params['lm_head.weight'].T
  return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def compute_grads(
  params: dict[str, torch.Tensor], tokens: torch.Tensor
) -> OrderedDict[str, torch.Tensor]:
  leaves = OrderedDict(
    (n, p.detach().clone().requires_grad_(True)) for n, p in params.items()
  )
  loss = llama_loss(leaves, tokens)
  grads = torch.autograd.grad(loss, list(leaves.values()))
  return OrderedDict((n, g.detach().clone()) for n, g in zip(leaves, grads))


def round_to_bf16(t: torch.Tensor) -> torch.Tensor:
  """float32 -> nearest bf16 value, returned as float32 (exactly representable)."""
  return t.to(torch.bfloat16).to(torch.float32)


# ----------------------------------------------------------------------------
# Running the reference optimizer
# ----------------------------------------------------------------------------
def make_reference_optimizer(
  named_params, *, whole_values: bool = False, **hparams
):
  import adam_mini

  hp = dict(HPARAMS)
  hp.update(hparams)
  opt = adam_mini.Adam_mini(
    named_params,
    lr=hp['lr'],
    betas=tuple(hp['betas']),
    eps=hp['eps'],
    weight_decay=hp['weight_decay'],
    dim=DIM,
    n_heads=N_HEADS,
    n_kv_heads=N_KV_HEADS,
    verbose=False,
  )
  if whole_values:
    # One second-moment scalar for the whole v_proj (attribute of 1.1.1).
    assert hasattr(opt, 'wv_names')
    opt.wv_names = set()
  return opt


def run_reference(
  init: dict[str, torch.Tensor],
  *,
  num_steps: int = NUM_STEPS,
  tokens: torch.Tensor | None = None,
  grads: list[dict[str, torch.Tensor]] | None = None,
  whole_values: bool = False,
  bf16_grads: bool = False,
  **hparams,
):
  """Run the reference Adam-mini.

  Either ``grads`` (a list of per-step gradient dicts to replay) or
  ``tokens`` (gradients are then computed at the current parameters each
  step) must be given.  Returns ``(grads_used, params_after)``: two lists of
  ``num_steps`` OrderedDicts of float32 numpy arrays keyed by torch name.
  """
  if (grads is None) == (tokens is None):
    raise ValueError('pass exactly one of grads / tokens')
  params = OrderedDict(
    (n, torch.nn.Parameter(t.detach().clone().to(torch.float32)))
    for n, t in init.items()
  )
  opt = make_reference_optimizer(
    list(params.items()), whole_values=whole_values, **hparams
  )
  grads_used, params_after = [], []
  for step in range(num_steps):
    if grads is not None:
      g = OrderedDict(
        (n, torch.as_tensor(np.asarray(grads[step][n])).clone()) for n in params
      )
    else:
      g = compute_grads(params, tokens)
      if bf16_grads:
        g = OrderedDict((n, round_to_bf16(t)) for n, t in g.items())
    for n, p in params.items():
      p.grad = g[n].clone()
    opt.step()
    grads_used.append(OrderedDict((n, t.numpy().copy()) for n, t in g.items()))
    params_after.append(
      OrderedDict((n, p.detach().numpy().copy()) for n, p in params.items())
    )
  return grads_used, params_after


def is_value_proj(name: str) -> bool:
  return 'v_proj' in name


def build_fixture(seed: int = FIXTURE_SEED) -> dict:
  from importlib.metadata import version

  import adam_mini  # noqa: F401  (version check below)

  torch.manual_seed(seed)
  init = init_params(seed)
  tokens = make_tokens(seed)
  grads, neuron = run_reference(init, tokens=tokens, bf16_grads=True)
  _, whole = run_reference(init, grads=grads, whole_values=True)

  # Sanity: the two variants differ exactly on v_proj.
  for t in range(NUM_STEPS):
    for n in init:
      same = np.array_equal(neuron[t][n], whole[t][n])
      if is_value_proj(n):
        assert not same, (t, n)
      else:
        assert same, (t, n)

  meta = dict(
    description='Adam-mini reference trajectories (PyTorch adam-mini) for parity tests',
    reference_package='adam-mini',
    reference_version=version('adam-mini'),
    torch_version=torch.__version__,
    numpy_version=np.__version__,
    seed=seed,
    num_steps=NUM_STEPS,
    hparams=dict(
      lr=HPARAMS['lr'],
      betas=list(HPARAMS['betas']),
      eps=HPARAMS['eps'],
      weight_decay=HPARAMS['weight_decay'],
      dim=DIM,
      n_heads=N_HEADS,
      n_kv_heads=N_KV_HEADS,
    ),
    model=dict(
      vocab=VOCAB,
      dim=DIM,
      n_heads=N_HEADS,
      n_kv_heads=N_KV_HEADS,
      head_dim=HEAD_DIM,
      ffn=FFN,
      n_layers=N_LAYERS,
      batch=BATCH,
      seq=SEQ,
    ),
    param_names=list(init.keys()),
    param_shapes={n: list(s) for n, s in param_shapes().items()},
    layout='torch (Linear weight is (out, in)); HF Llama names',
    grad_source='cross-entropy of a fixed random token batch through a minimal Llama forward '
    '(RMSNorm, GQA attention without rotary, SwiGLU), recomputed at the current params '
    "of the 'neuron' trajectory each step, rounded to bf16 precision before use",
    grad_encoding='bf16-exact float32, stored as the 2 high byte planes (see fixture_io.py)',
    trajectories=dict(
      neuron=dict(
        description='Adam_mini as shipped (v_proj: one scalar per output neuron)',
        reference_whole_values=False,
      ),
      whole=dict(
        description='Adam_mini with optimizer.wv_names = set() (v_proj: one scalar for '
        "the whole tensor), fed the same recorded gradients as 'neuron'",
        reference_whole_values=True,
        other_leaves_from='neuron',
      ),
    ),
    steps_indexing='row t-1 of grads / params_<traj> = gradient fed at / params after '
    'step t, t = 1..num_steps',
  )

  v_names = [n for n in init if is_value_proj(n)]
  return dict(
    meta=meta,
    init=OrderedDict((n, t.numpy()) for n, t in init.items()),
    grads=grads,
    trajectories=dict(neuron=(list(init), neuron), whole=(v_names, whole)),
  )


def main() -> None:
  torch.set_num_threads(1)
  fx = build_fixture()
  os.makedirs(FIXTURE_DIR, exist_ok=True)
  fixture_io.save_fixture(FIXTURE_PATH, **fx)
  # Round-trip check: the file decodes to exactly what the reference produced.
  back = fixture_io.load_fixture(FIXTURE_PATH)
  for n, a in fx['init'].items():
    assert np.array_equal(back['init'][n], a), n
  for t in range(NUM_STEPS):
    for n in fx['meta']['param_names']:
      assert np.array_equal(back['grads'][t][n], fx['grads'][t][n]), (t, n)
    for traj, (_, steps) in fx['trajectories'].items():
      for n in fx['meta']['param_names']:
        assert np.array_equal(back['params'][traj][t][n], steps[t][n]), (
          traj,
          t,
          n,
        )
  size = os.path.getsize(FIXTURE_PATH)
  print(f'wrote {FIXTURE_PATH} ({size} bytes)')


if __name__ == '__main__':
  main()
