"""Hand-made mutation testing of ``optax_adam_mini``: does the suite catch
realistic bugs?

Each mutant below is one small bug a person could plausibly write (an
off-by-one, a wrong axis, a swapped ``b1``/``b2``, ``eps`` inside the square
root, a flipped comparison, a missing weight-decay mask, a wrong default,
...), given as ``(file, old snippet, new snippet, description)``. The runner
copies the repository to a temporary directory once, then for each mutant
replaces the snippet (which must occur exactly once), runs the fast tests
chosen for that file with ``pytest -x -q -p no:cacheprovider -n 0``, and puts
the file back. The tests are tiers, tried in order: the mutant is killed by
the first tier that fails, and a survivor has run every tier. The result
goes to ``tests/mutation/results.json``: per mutant, killed or survived, the
first failing test, the seconds it took; the score is killed / (mutants -
equivalent), an equivalent mutant being one no test can tell from the
library (each has its reason in ``EQUIVALENT``).

Why hand-made rather than mutmut or cosmic-ray: those generate thousands of
operator swaps over every line, most of them in messages and docstrings or
equivalent, and each is a fresh pytest process that re-imports and
re-compiles JAX: days on a 2-core shared machine. Hand-made mutants aim at
the math and the layout rules, where a bug is silent.

Not part of CI (``tests/mutation/conftest.py`` keeps pytest from collecting
this directory). Run from the repository root with the project's venv:

  python tests/mutation/run_mutants.py              # all, writes results.json
  python tests/mutation/run_mutants.py --only ID..  # some, prints only
  python tests/mutation/run_mutants.py --check      # snippets apply, no tests
  python tests/mutation/run_mutants.py --baseline   # every tier passes unmutated
  python tests/mutation/run_mutants.py --list

The whole pass took 33 minutes on 2 shared (busy) CPU cores, 2026-12-02:
most mutants die in their first tier within 5-30 s; a survivor, or an
equivalent mutant, runs every tier (1-4 minutes). The first pass killed 66 of
80; each of the 10 real survivors then got a test, and the 4 equivalent ones
their reason below (rerun with --only: all 76 others killed).

A second pass (issue 15) added 16 mutants of the quantized first moment,
``quantize.py`` and the quantized branch of ``transform.py`` (the codes, the
int4 packing, the group layout, the group maxima, stochastic rounding), run
with --only on 2026-12-02: 12 killed at once; the two survivors (the rounding
key not carried on, noise in [0, 1/2)) died to a new test, and 2 are
equivalent. On 2026-12-02 (later) the rounding noise became a hash and the
state's key a constant seed: the key and zero-group mutants were rewritten
for that code and two noise mutants added (the noise ignoring the key, the
index ignoring strides), all run with --only: 3 killed, 1 equivalent (the
zero group, as before). The whole pass now: 98 mutants, 92 killed, 6
equivalent, score 100 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name('results.json')
COPIED = ('optax_adam_mini', 'tests', 'examples', 'benchmarks')
COPIED_FILES = ('pyproject.toml', 'README.md')
TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  file: str  # relative to optax_adam_mini/
  old: str
  new: str
  description: str
  tests: tuple[tuple[str, ...], ...] | None = None  # tiers; None: the file's


# Tiers of pytest arguments per library file, fastest (and most likely to
# kill) first.
PROPERTIES_FAST = (
  'tests/test_properties.py',
  '-k',
  'kept_axes_after or any_rule or elementwise_blocks or whole_blocks',
)
REAL_MODELS = (
  'tests/real_models/test_real_models.py',
  '-k',
  'test_every_leaf_gets_its_expected_block',
)
# The quantized first moment: the codes, the NumPy-reference update and the
# layout rules first (about 40 s), then the state types, jit, wrappers and
# non-finite groups; never the slow restart and LM-training tests.
QUANTIZED_FAST = (
  (
    'tests/test_quantized_moment.py',
    '-k',
    'codes_round or dynamic_magnitudes or unbiased or numpy_reference or '
    'small_and or int4_codes or only_where or groups_lie or tracks or '
    'rounding_noise',
  ),
  (
    'tests/test_quantized_moment.py',
    '-k',
    'state_types or nonfinite or bf16 or checkpoint_holds or int_mu_dtypes '
    'or zero_group',
  ),
)
TIERS = {
  'transform.py': (
    ('tests/test_transform.py',),
    PROPERTIES_FAST,
    (
      'tests/test_reference_parity.py',
      '-k',
      'parity_with_reference_fixture',
    ),
  ),
  'block.py': (
    PROPERTIES_FAST,
    ('tests/test_transform.py',),
    ('tests/test_properties.py', '-k', 'invalid or missing'),
    ('tests/test_default_partition.py',),
  ),
  'partition.py': (
    ('tests/test_default_partition.py', 'tests/test_layouts.py'),
    ('tests/test_transform.py',),
    ('tests/test_properties.py', '-k', 'invalid or missing'),
  ),
  'layout.py': (
    ('tests/test_layouts.py', 'tests/test_default_partition.py'),
    REAL_MODELS,
  ),
  'default_partition.py': (
    ('tests/test_default_partition.py', 'tests/test_layouts.py'),
    REAL_MODELS,
    ('tests/test_transform.py', '-k', 'mask'),
  ),
  'conventions.py': (
    ('tests/test_default_partition.py', 'tests/test_layouts.py'),
    REAL_MODELS,
  ),
  'annotations.py': (
    ('tests/test_layouts.py', 'tests/test_default_partition.py'),
    REAL_MODELS,
  ),
  'flax_metadata.py': (
    ('tests/test_flax_sharding.py', '-k', 'plain or linen'),
    ('tests/test_layouts.py',),
  ),
  'sharding.py': (
    ('tests/test_sharding.py', '-k', 'state_shardings'),
    (
      'tests/test_sharding.py',
      '-k',
      'mesh_training and explicit and not stacked',
    ),
  ),
  'report.py': (('tests/test_default_partition.py', 'tests/test_layouts.py'),),
  'calibrate.py': (('tests/test_calibrate.py',),),
  'quantize.py': QUANTIZED_FAST,
}


def m(id, file, old, new, description, tests=None):
  return Mutant(id, file, old, new, description, tests)


MUTANTS = [
  # transform.py: the update math and the state --------------------------
  m(
    'moment-b2',
    'transform.py',
    'update_moment(g, mu, b1, 1)',
    'update_moment(g, mu, b2, 1)',
    'first moment decays with b2 instead of b1',
  ),
  m(
    'v-ema-swapped',
    'transform.py',
    '(1 - b2) * mean_sq + b2 * v',
    'b2 * mean_sq + (1 - b2) * v',
    'v EMA weights swapped (new mean square weighted by b2)',
  ),
  m(
    'mu-correction-b2',
    'transform.py',
    'bias_correction(mu_new, b1, count)',
    'bias_correction(mu_new, b2, count)',
    'first-moment bias correction with b2',
  ),
  m(
    'no-v-correction',
    'transform.py',
    'v_hat = optax.tree.bias_correction(v_new, b2, count)',
    'v_hat = v_new',
    'no bias correction of v',
  ),
  m(
    'correction-old-count',
    'transform.py',
    '      count_inc,\n      b1,',
    '      state.count,\n      b1,',
    'bias correction with the old step count t - 1',
  ),
  m(
    'eps-inside-sqrt',
    'transform.py',
    'jnp.sqrt(v + eps_root) + eps',
    'jnp.sqrt(v + eps_root + eps)',
    'eps inside the square root',
  ),
  m(
    'eps-root-outside-sqrt',
    'transform.py',
    'jnp.sqrt(v + eps_root) + eps',
    'jnp.sqrt(v) + eps_root + eps',
    'eps_root outside the square root',
  ),
  m(
    'mu-stored-in-grad-dtype',
    'transform.py',
    'mu_new.astype(mu.dtype)',
    'mu_new.astype(g.dtype)',
    'mu stored in the gradient dtype, not mu_dtype',
  ),
  m(
    'update-float32',
    'transform.py',
    'return update.astype(g.dtype), mu_new.astype(mu.dtype)',
    'return update, mu_new.astype(mu.dtype)',
    'update returned in float32 whatever the gradient dtype',
  ),
  m(
    'init-ignores-mu-dtype',
    'transform.py',
    'dtype=mu_dtype or x.leaf.dtype',
    'dtype=x.leaf.dtype',
    'init ignores mu_dtype',
  ),
  m(
    'count-overflows',
    'transform.py',
    'count_inc = optax.safe_increment(state.count)',
    'count_inc = state.count + 1',
    'step count overflows instead of saturating',
  ),
  m(
    'b-zero-rejected',
    'transform.py',
    'not 0.0 <= value < 1.0',
    'not 0.0 < value < 1.0',
    'b1 = 0 or b2 = 0 rejected',
  ),
  m(
    'eps-zero-rejected',
    'transform.py',
    "if name not in ('b1', 'b2') and value < 0:",
    "if name not in ('b1', 'b2') and value <= 0:",
    'eps = 0 (or weight_decay = 0) rejected',
  ),
  m(
    'no-default-mask',
    'transform.py',
    '  if mask is None:\n    mask = default_weight_decay_mask\n',
    '',
    'adam_mini decays every leaf (norm scales and biases too)',
  ),
  m(
    'mask-dropped',
    'transform.py',
    'optax.add_decayed_weights(weight_decay, mask)',
    'optax.add_decayed_weights(weight_decay)',
    'a given mask is ignored',
  ),
  m(
    'chain-b1-b2-swapped',
    'transform.py',
    '      b1=b1,\n      b2=b2,\n      eps=eps,\n      eps_root=eps_root,\n'
    '      mu_dtype=mu_dtype,\n      partition=partition,',
    '      b1=b2,\n      b2=b1,\n      eps=eps,\n      eps_root=eps_root,\n'
    '      mu_dtype=mu_dtype,\n      partition=partition,',
    'adam_mini passes b1 and b2 swapped',
  ),
  m(
    'chain-drops-eps-root',
    'transform.py',
    '      eps=eps,\n      eps_root=eps_root,\n'
    '      mu_dtype=mu_dtype,\n      partition=partition,',
    '      eps=eps,\n      mu_dtype=mu_dtype,\n      partition=partition,',
    'adam_mini drops eps_root',
  ),
  m(
    'default-weight-decay-zero',
    'transform.py',
    'weight_decay: optax.ScalarOrSchedule = 1e-4,',
    'weight_decay: optax.ScalarOrSchedule = 0.0,',
    "adam_mini's default weight decay 0 (optax.adamw's is 1e-4)",
  ),
  # block.py: blocks bound to shapes, and the reductions ------------------
  m(
    'kept-axes-unshifted',
    'block.py',
    'kept = [a + 1 if a > head_axis else a for a in kept] + [head_axis]',
    'kept = list(kept) + [head_axis]',
    'issue 15: kept axes after a head split not shifted in the view',
  ),
  m(
    'kept-shift-ge',
    'block.py',
    'a + 1 if a > head_axis else a',
    'a + 1 if a >= head_axis else a',
    'kept-axis shift with >= (the head axis itself is never kept)',
  ),
  m(
    'head-dim-divides-unchecked',
    'block.py',
    '    if shape[head_axis] % block.head_dim:\n',
    '    if False:\n',
    'head_dim not dividing the axis is not rejected',
  ),
  m(
    'repeated-axes-unchecked',
    'block.py',
    '  if len(set(kept)) != len(kept):\n',
    '  if False:\n',
    'repeated kept axes are not rejected',
  ),
  m(
    'axis-range-off-by-one',
    'block.py',
    'if not -ndim <= axis < ndim:',
    'if not -ndim < axis < ndim:',
    'axis -ndim rejected',
  ),
  m(
    'negative-axes-unnormalized',
    'block.py',
    '  return axis % ndim\n',
    '  return axis\n',
    'negative axes kept negative',
  ),
  m(
    'sum-not-mean',
    'block.py',
    'return jnp.mean(g**2, axis=plan.reduce_axes, keepdims=True)',
    'return jnp.sum(g**2, axis=plan.reduce_axes, keepdims=True)',
    'block sum of squares instead of mean',
  ),
  m(
    'heads-size-head-dim-only',
    'block.py',
    'size = math.prod(plan.view_shape[a] for a in plan.reduce_axes)',
    'size = math.prod(plan.shape[a] for a in plan.reduce_axes)',
    'head block size read from the leaf shape, not the split view',
  ),
  m(
    'heads-other-axes-unmapped',
    'block.py',
    '    a if a < split else a - 1\n',
    '    a\n',
    'heads: view axes not mapped back to leaf axes before reducing',
  ),
  m(
    'heads-divide-wrong-dim',
    'block.py',
    'view = denominator.shape[: split + 1] + (plan.view_shape[split + 1],)',
    'view = denominator.shape[: split + 1] + (plan.view_shape[split],)',
    'heads: denominator spread over num_heads columns, not head_dim',
  ),
  m(
    'concat-offsets',
    'block.py',
    '  for size in plan.sizes[:-1]:\n',
    '  for size in plan.sizes[1:]:\n',
    'concat parts sliced at the wrong offsets',
  ),
  # partition.py ----------------------------------------------------------
  m(
    'nnx-value-kept',
    'partition.py',
    '  if key_path and isinstance(key_path[-1], GetAttrKey) and '
    "names[-1] == 'value':\n    names.pop()\n",
    '',
    "NNX's trailing .value kept in paths",
  ),
  m(
    'prefix-shortest-first',
    'partition.py',
    'for end in range(len(path), -1, -1):',
    'for end in range(0, len(path) + 1):',
    'a partition prefix: the shortest match wins, not the longest',
  ),
  m(
    'prefix-root-skipped',
    'partition.py',
    'for end in range(len(path), -1, -1):',
    'for end in range(len(path), 0, -1):',
    'a partition prefix: the root () never looked up',
  ),
  m(
    'table-shape-unchecked',
    'partition.py',
    '      if tuple(leaf.shape) != shape:\n',
    '      if False:\n',
    'update shapes not checked against the table',
  ),
  m(
    'table-empty-eq-and',
    'partition.py',
    'if not self.blocks or not other.blocks:',
    'if not self.blocks and not other.blocks:',
    'an empty table agrees only with an empty one',
  ),
  # layout.py -------------------------------------------------------------
  m(
    'value-no-head-dim',
    'layout.py',
    "Role.VALUE: {'layers', 'heads', 'head_dim', 'out'},",
    "Role.VALUE: {'layers', 'heads', 'out'},",
    'values with explicit heads: one v per head, not per neuron',
  ),
  m(
    'attention-out-in',
    'layout.py',
    "Role.ATTENTION_OUT: {'layers', 'out'},",
    "Role.ATTENTION_OUT: {'layers', 'in'},",
    'attention output: one v per input neuron',
  ),
  m(
    'embedding-per-feature',
    'layout.py',
    "Role.EMBEDDING: {'layers', 'vocab'},",
    "Role.EMBEDDING: {'layers', 'out'},",
    'embedding: one v per feature, not per token',
  ),
  m(
    'output-not-per-token',
    'layout.py',
    "Role.OUTPUT: {'layers', 'vocab', 'out'},",
    "Role.OUTPUT: {'layers', 'out'},",
    'LM head: not one v per token',
  ),
  m(
    'norm-not-per-layer',
    'layout.py',
    "Role.NORM: {'layers'},",
    'Role.NORM: set(),',
    'stacked norm scales share one v across layers',
  ),
  m(
    'whole-values-across-layers',
    'layout.py',
    "    kept = {'layers'}\n",
    '    kept = set()\n',
    "value_blocks='whole': one v across stacked layers",
  ),
  m(
    'kv-parts-swapped',
    'layout.py',
    '  2: (Role.KEY, Role.VALUE),',
    '  2: (Role.VALUE, Role.KEY),',
    'k|v stacked on an axis of 2: value first',
  ),
  m(
    'bias-whole',
    'layout.py',
    '  if layout.role is Role.BIAS:\n    return Block.elementwise()',
    '  if layout.role is Role.BIAS:\n    return Block.whole()',
    'biases share one v (the reference gives them plain Adam)',
  ),
  m(
    'fused-inner-out',
    'layout.py',
    "    inner = 'head_dim'  # parts of each head's coordinates (MLA's k|v)",
    "    inner = 'out'",
    'fused parts beside a heads axis read as out, not head_dim',
  ),
  # default_partition.py ----------------------------------------------------
  m(
    'stacked-explicit-gt-4',
    'default_partition.py',
    '  if len(shape) >= 4:\n',
    '  if len(shape) > 4:\n',
    'issue 15: stacked explicit-head kernels (L, D, H, Dh) with > 4',
  ),
  m(
    'ln-prefix-not-norm',
    'default_partition.py',
    " or name.startswith('ln_')",
    '',
    "GPT-2's ln_1/ln_2/ln_f not read as norms",
  ),
  m(
    'decay-biases',
    'default_partition.py',
    'classify(info.path) not in (Role.NORM, Role.BIAS)',
    'classify(info.path) not in (Role.NORM,)',
    'the default mask decays biases',
  ),
  m(
    'width-from-vocab',
    'default_partition.py',
    '      return info.shape[-1]\n',
    '      return info.shape[0]\n',
    'model width read off the embedding rows, not its features',
  ),
  m(
    'layer-axis-votes-swapped',
    'default_partition.py',
    '      if second == width and first != width:\n        votes.add(0)',
    '      if second == width and first != width:\n        votes.add(1)',
    'stacked norms (L, D) vote for layers on axis 1',
  ),
  m(
    'conv1d-any-vote',
    'default_partition.py',
    '  return votes == {True}',
    '  return True in votes',
    'GPT-2 Conv1D read as (out, in) when the MLP kernels disagree',
  ),
  m(
    'key-heads-from-num-heads',
    'default_partition.py',
    '      if role is Role.QUERY\n      else (self.num_kv_heads, '
    "'num_kv_heads')",
    '      if role in (Role.QUERY, Role.KEY)\n      else (self.num_kv_heads, '
    "'num_kv_heads')",
    'keys sized by num_heads under GQA',
  ),
  m(
    'qkv-head-parts-order',
    'default_partition.py',
    'return ((Role.QUERY, num_q), (Role.KEY, num_kv), (Role.VALUE, num_kv))',
    'return ((Role.QUERY, num_q), (Role.VALUE, num_kv), (Role.KEY, num_kv))',
    'q|k|v along one heads axis: value before key',
  ),
  m(
    'interleaved-order',
    'default_partition.py',
    'for rule in (one, one, value)',
    'for rule in (one, value, one)',
    'Bloom/NeoX per-head q|k|v: key and value rules swapped',
  ),
  m(
    'rank3-width-explicit-flipped',
    'default_partition.py',
    '    if in_or_out == width and other != width:\n      return True',
    '    if in_or_out == width and other != width:\n      return False',
    '(D, H, Dh) with D the width read as flattened',
  ),
  m(
    'weight-not-out-in',
    'default_partition.py',
    "  out_in = leaf == 'weight' or (",
    "  out_in = leaf == 'weights' or (",
    'PyTorch/Equinox (out, in) weight read as (in, out)',
  ),
  m(
    'experts-single-extra',
    'default_partition.py',
    '1 if extra > 1 and any(_is_mlp(n.lower()) for n in info.path) else 0',
    '1 if extra >= 1 and any(_is_mlp(n.lower()) for n in info.path) else 0',
    'an MLP kernel with one extra axis read as experts, not scanned layers',
  ),
  m(
    'layer-axis-zero-inserted',
    'default_partition.py',
    '  if 0 < tree.layer_axis < len(info.shape):',
    '  if 0 <= tree.layer_axis < len(info.shape):',
    'layers inserted at axis 0 where they already lead',
  ),
  m(
    'router-experts-as-layers',
    'default_partition.py',
    '    if role is Role.ROUTER and key in names_lib.EXPERT_AXES:\n'
    "      kind = 'out'",
    '    if role is Role.ROUTER and key in names_lib.EXPERT_AXES:\n'
    "      kind = 'layers'",
    "a router's expert axis read as stacked layers",
  ),
  m(
    'flax-fan-out-first',
    'default_partition.py',
    "    fill = {a: 'in' for a in features[:-1]}\n    if features:\n"
    "      fill[features[-1]] = 'out'",
    "    fill = {a: 'in' for a in features[1:]}\n    if features:\n"
    "      fill[features[0]] = 'out'",
    'Flax convention: the first feature axis read as the fan-out',
  ),
  m(
    'layouts-whole-path-only',
    'default_partition.py',
    'if fnmatch.fnmatchcase(text, pattern) or fnmatch.fnmatchcase(\n'
    "      text, '*/' + pattern\n    ):",
    'if fnmatch.fnmatchcase(text, pattern):',
    'layouts= patterns must match the whole path, not its end',
  ),
  m(
    'unrecognised-rank-3',
    'default_partition.py',
    '    and len(d.shape) >= 2\n',
    '    and len(d.shape) > 2\n',
    'no warning for an unrecognised rank-2 leaf',
  ),
  m(
    'value-blocks-with-partition',
    'default_partition.py',
    "  if value_blocks != 'neuron':\n    given.append('value_blocks')\n",
    '',
    'value_blocks= silently ignored when partition= is given',
  ),
  m(
    'num-layers-off-by-one',
    'default_partition.py',
    '  return max(numbers) + 1 if numbers else None',
    '  return max(numbers) if numbers else None',
    'layer count from numbered layers off by one',
  ),
  m(
    'query-head-dim-from-leading-axis',
    'default_partition.py',
    '          size = info.shape[-1]\n',
    '          size = info.shape[0]\n',
    'key head size from the queries read off their input axis',
  ),
  # conventions.py ----------------------------------------------------------
  m(
    'kv-axis-unknown',
    'conventions.py',
    "  'kv': 'head_dim',\n",
    '',
    "MaxText's 'kv' axis name (head_dim) unknown",
  ),
  m(
    'attn-vec-einsum-layout',
    'conventions.py',
    "'attn_vec_einsum': 'heads head_dim out',",
    "'attn_vec_einsum': 'heads out head_dim',",
    "gemma's attn_vec_einsum read as (H, D, Dh)",
  ),
  m(
    'haiku-bias-unknown',
    'conventions.py',
    "BIAS = frozenset({'b'})",
    'BIAS = frozenset()',
    "a leaf named 'b' (haiku, gemma) not a bias",
  ),
  # annotations.py ----------------------------------------------------------
  m(
    'logical-names-dropped',
    'annotations.py',
    "      return tuple(x.names), 'flax logical', None, 'linen'",
    "      return None, None, None, 'linen'",
    'Linen LogicallyPartitioned axis names ignored',
  ),
  m(
    'penzai-names-leading',
    'annotations.py',
    '    names[rank - len(named) + offset] = name',
    '    names[offset] = name',
    'penzai named axes placed first, not last',
  ),
  m(
    'dotted-keys-not-split',
    'annotations.py',
    "    part for name in path for part in str(name).split('.') if part != ''",
    '    str(name) for name in path',
    'dotted keys kept as one path segment',
  ),
  m(
    'nnx-names-ignored',
    'annotations.py',
    "_NNX_NAME_KEYS = ('out_sharding', 'sharding_names', 'sharding')",
    '_NNX_NAME_KEYS = ()',
    'NNX Variable sharding names ignored',
  ),
  # flax_metadata.py --------------------------------------------------------
  m(
    'v-names-on-reduced-axes',
    'flax_metadata.py',
    '    None if a in plan.reduce_axes else name for a, name in enumerate(names)',
    '    name for a, name in enumerate(names)',
    "v keeps the param's mesh names on axes it averages over",
  ),
  m(
    'v-names-head-swapped',
    'flax_metadata.py',
    'names = names[:split] + (head, None) + names[split + 1 :]',
    'names = names[:split] + (None, head) + names[split + 1 :]',
    'split head: the mesh name on head_dim, not on the head index',
  ),
  m(
    'mesh-divides-flipped',
    'flax_metadata.py',
    '  return size % math.prod(axis_sizes[a] for a in axes if a is not None) == 0',
    '  return size % math.prod(axis_sizes[a] for a in axes if a is not None) != 0',
    'a mesh axis dividing the heads replicates v, and one cutting them shards it',
  ),
  m(
    'v-tree-unboxed',
    'flax_metadata.py',
    '    return _rebox(x, v, plan) if is_box(x) else v',
    '    return v',
    'v loses its Flax boxes (replicated, no sharding names)',
  ),
  # sharding.py -------------------------------------------------------------
  m(
    'spec-dropped',
    'sharding.py',
    '  if isinstance(sharding, NamedSharding):\n    return sharding.spec\n',
    '',
    "state_shardings ignores the params' NamedShardings",
  ),
  m(
    'auto-mesh',
    'sharding.py',
    '  explicit = _explicit_mesh(mesh)\n',
    '  explicit = mesh\n',
    'state_shardings traces init on an Auto mesh',
  ),
  # report.py ---------------------------------------------------------------
  m(
    'bytes-as-elements',
    'report.py',
    'math.prod(x.shape) * x.dtype.itemsize',
    'math.prod(x.shape) * 4',
    'state bytes counted at 4 per element whatever the dtype',
  ),
  m(
    'report-ignores-mu-dtype',
    'report.py',
    'scale_by_adam_mini(partition=label, mu_dtype=mu_dtype)',
    'scale_by_adam_mini(partition=label)',
    'report ignores mu_dtype',
  ),
  # calibrate.py ------------------------------------------------------------
  m(
    'snr-threshold-ge',
    'calibrate.py',
    '    if snrs[best] > threshold:',
    '    if snrs[best] >= threshold:',
    'an axis whose SNR equals the threshold is compressed',
  ),
  m(
    'snr-norms-compressed',
    'calibrate.py',
    'if len(shape) < 2 or classify(path) in (Role.NORM, Role.BIAS):',
    'if len(shape) < 2:',
    'norm scales and biases compressed too',
  ),
  # quantize.py and the quantized branch of transform.py (issue 15) --------
  m(
    'q-max-from-old-m',
    'transform.py',
    'quantize.group_stats(g, mu_new, plan, layout)',
    'quantize.group_stats(g, quantize.decode(mu, layout), plan, layout)',
    'group maxima taken from the old (decoded) m, not the updated one',
    QUANTIZED_FAST,
  ),
  m(
    'q-encode-bias-corrected',
    'transform.py',
    'mu_new = quantize.encode(mu_new, maxima, layout, key)',
    'mu_new = quantize.encode(mu_hat, maxima, layout, key)',
    'the bias-corrected m is encoded (against the uncorrected maxima)',
    QUANTIZED_FAST,
  ),
  m(
    'q-key-not-advanced',
    'transform.py',
    'keys = quantize.step_keys(state.rng_key, count_inc, len(plans))',
    'keys = quantize.step_keys(state.rng_key, 0, len(plans))',
    'the stochastic-rounding keys ignore the step: same noise every step',
    QUANTIZED_FAST,
  ),
  m(
    'q-linear-unscaled',
    'quantize.py',
    '  x = u * _levels(bits)\n',
    '  x = u\n',
    'linear code: u not multiplied by the levels (codes -1, 0, 1 only)',
  ),
  m(
    'q-linear-floor',
    'quantize.py',
    'c = jnp.round(x) if noise is None else jnp.floor(x + noise)',
    'c = jnp.floor(x) if noise is None else jnp.floor(x + noise)',
    'linear code: nearest rounding is floor',
  ),
  m(
    'q-levels-off-by-one',
    'quantize.py',
    '  return 2 ** (bits - 1) - 1\n',
    '  return 2 ** (bits - 1)\n',
    'linear levels 2**(bits-1) (128 / 8): the top code overflows its bits',
  ),
  m(
    'q-dynamic-decade-lt',
    'quantize.py',
    'inside = magnitude <= low  # at or below',
    'inside = magnitude < low  # at or below',
    'dynamic encode: a value on a decade boundary goes to the decade above',
  ),
  m(
    'q-dynamic-bottom-not-zero',
    'quantize.py',
    'low = 10.0 ** -(e + 1) if e < magnitude_bits - 1 else 0.0',
    'low = 10.0 ** -(e + 1)',
    'dynamic code: the lowest decade starts at its 10**-(e+1), not at 0',
  ),
  m(
    'q-pack-nibbles-swapped',
    'quantize.py',
    'return low | (high << 4)',
    'return high | (low << 4)',
    'int4 pack: first code in the high nibble, unpack reads it low',
  ),
  m(
    'q-unpack-no-sign-extension',
    'quantize.py',
    'pairs = jnp.right_shift(',
    'pairs = jax.lax.shift_right_logical(',
    'int4 unpack: logical shift, the nibble sign is lost',
  ),
  m(
    'q-min-size-le',
    'quantize.py',
    'math.prod(shape) < quantization.min_size',
    'math.prod(shape) <= quantization.min_size',
    'a leaf of exactly min_size coordinates keeps a float32 m',
  ),
  m(
    'q-group-along-head-axis',
    'quantize.py',
    'elif view_axis > split + 1:',
    'elif view_axis > split:',
    'a head split leaf may take its groups along the (kept) head axis',
  ),
  m(
    'q-absmax-signed',
    'quantize.py',
    'm_view = jnp.abs(_group_view(m, layout))',
    'm_view = _group_view(m, layout)',
    'group scale is max(m), not max(|m|)',
  ),
  m(
    'q-decode-bf16',
    'quantize.py',
    'return c.astype(jnp.float32) * (1.0 / _levels(bits))',
    'return c.astype(jnp.bfloat16) * (1.0 / _levels(bits))',
    'linear decode in bfloat16',
  ),
  m(
    'q-uniform-half-range',
    'quantize.py',
    'return (bits >> 8).astype(jnp.float32)',
    'return (bits >> 9).astype(jnp.float32)',
    'stochastic-rounding noise in [0, 1/2): rounds down too often',
  ),
  m(
    'q-zero-group-divides',
    'quantize.py',
    'return jnp.where(maxima > 0, 1 / jnp.where(maxima > 0, maxima, 1), 0)',
    'return 1 / maxima',
    'an all-zero group multiplies 0 by 1 / 0 (NaN codes)',
  ),
  m(
    'q-noise-ignores-key',
    'quantize.py',
    'bits = _lowbias32(_lowbias32(index ^ words[0]) + words[1])',
    'bits = _lowbias32(_lowbias32(index))',
    'the same rounding noise at every step (and for every leaf)',
  ),
  m(
    'q-noise-index-no-stride',
    'quantize.py',
    '    stride *= like.shape[axis]\n',
    '',
    'coordinates (i, j) and (j, i) share their rounding noise',
  ),
]

# Mutants no test can tell from the library: the reason each one changes
# nothing the library does (checked by reading the code it touches).
EQUIVALENT = {
  'kept-shift-ge': (
    'bind raises before this line when the head axis is also kept, so no '
    'kept axis equals head_axis and > and >= shift the same axes.'
  ),
  'prefix-root-skipped': (
    'the empty prefix () holds a Block only when the partition is a single '
    'Block (the one leaf at the root), which resolve handles before '
    '_prefix_lookup; a tree of rules has no leaf at ().'
  ),
  'prefix-shortest-first': (
    'Blocks are leaves of the rules tree, so at most one prefix of a leaf '
    'path holds one (a node with a Block has no subtree): the longest and '
    'the shortest match are the same match.'
  ),
  'layer-axis-zero-inserted': (
    "with layer_axis 0, inserting 'layers' at index 0 extra - experts times "
    "after ['layers'] * experts gives ['layers'] * extra + base, the kinds "
    'the line before already built.'
  ),
  'q-dynamic-decade-lt': (
    'a magnitude exactly on the top of a decade (10**-e) is, in the '
    'original, the last level of decade e (j = levels) and, in the mutant, '
    'j = 0 of the decade above, whose index levels - 1 is that same level: '
    'the same code. Only under stochastic rounding does float32 tell them '
    'apart: (10**-5 - 10**-6) / step is 1.9999998, so the original rounds '
    'that one value a level down with probability 2e-7, and the mutant never.'
  ),
  'q-zero-group-divides': (
    'an all-zero group has scale 0: the mutant multiplies 0 by 1 / 0 and the NaN '
    'codes become some integer, but decode multiplies every code of the '
    'group by that zero scale, so m is 0 either way (and a NaN scale gives '
    'NaN either way); only the unused code bits of a zero group differ.'
  ),
}


def _apply(text: str, mutant: Mutant) -> str:
  count = text.count(mutant.old)
  if count != 1:
    raise ValueError(
      f'{mutant.id}: the snippet occurs {count} times in {mutant.file}.'
    )
  return text.replace(mutant.old, mutant.new)


def _copy_repo(dest: Path) -> None:
  ignore = shutil.ignore_patterns(
    '__pycache__', '.hypothesis', '.pytest_cache', 'mutation'
  )
  for name in COPIED:
    shutil.copytree(ROOT / name, dest / name, ignore=ignore)
  for name in COPIED_FILES:
    shutil.copy2(ROOT / name, dest / name)


def _pytest(workdir: Path, args: tuple[str, ...]) -> tuple[int, str]:
  env = dict(os.environ, PYTHONPATH=str(workdir), JAX_PLATFORMS='cpu')
  env.pop('HYPOTHESIS_RANDOM', None)
  command = [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider']
  command += ['-n', '0', '-x', '-q', *args]
  try:
    done = subprocess.run(
      command,
      cwd=workdir,
      env=env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
    )
  except subprocess.TimeoutExpired:
    return -1, 'timeout'
  return done.returncode, done.stdout + done.stderr


def _first_failure(output: str) -> str:
  for line in output.splitlines():
    found = re.match(r'(FAILED|ERROR) (\S+)', line)
    if found:
      return found.group(2)
  return output.strip().splitlines()[-1] if output.strip() else ''


def _tiers(mutant: Mutant):
  return mutant.tests or TIERS[mutant.file]


def run(mutants, workdir: Path, save) -> list[dict]:
  results = []
  for mutant in mutants:
    path = workdir / 'optax_adam_mini' / mutant.file
    original = path.read_text()
    path.write_text(_apply(original, mutant))
    start = time.time()
    status, killer, tier = 'survived', None, None
    try:
      for index, args in enumerate(_tiers(mutant)):
        rc, output = _pytest(workdir, args)
        if rc == 5:
          raise RuntimeError(f'{mutant.id}: no tests collected by {args}')
        if rc != 0:
          status, tier = 'killed', index
          killer = 'timeout' if rc == -1 else _first_failure(output)
          break
    finally:
      path.write_text(original)
    if status == 'survived' and mutant.id in EQUIVALENT:
      status = 'equivalent'
    seconds = round(time.time() - start, 1)
    result = {
      'id': mutant.id,
      'file': f'optax_adam_mini/{mutant.file}',
      'description': mutant.description,
      'status': status,
      'killed_by': killer,
      'tier': tier,
      'seconds': seconds,
    }
    if mutant.id in EQUIVALENT:
      result['equivalent_because'] = EQUIVALENT[mutant.id]
    results.append(result)
    save(results)
    print(
      f'{status:10} {mutant.id:34} {seconds:6.1f}s  {killer or ""}',
      flush=True,
    )
  return results


def summary(results: list[dict]) -> dict:
  counts = {
    s: sum(r['status'] == s for r in results)
    for s in ('killed', 'survived', 'equivalent')
  }
  scored = counts['killed'] + counts['survived']
  return {
    'mutants': len(results),
    **counts,
    'score': round(counts['killed'] / scored, 4) if scored else None,
    'seconds': round(sum(r['seconds'] for r in results), 1),
    'complete': len(results) == len(MUTANTS),
    'python': sys.version.split()[0],
  }


def _load() -> dict:
  if not RESULTS.exists():
    return {}
  return {r['id']: r for r in json.loads(RESULTS.read_text())['mutants']}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', nargs='+', metavar='ID')
  parser.add_argument('--check', action='store_true')
  parser.add_argument('--baseline', action='store_true')
  parser.add_argument('--list', action='store_true')
  parser.add_argument(
    '--resume', action='store_true', help='skip mutants in results.json'
  )
  args = parser.parse_args(argv)

  ids = [x.id for x in MUTANTS]
  if len(set(ids)) != len(ids):
    raise ValueError('mutant ids repeat')
  unknown = set(EQUIVALENT) - set(ids)
  if unknown:
    raise ValueError(f'EQUIVALENT names unknown mutants: {sorted(unknown)}')
  mutants = MUTANTS
  if args.only:
    missing = set(args.only) - set(ids)
    if missing:
      raise ValueError(f'unknown mutants: {sorted(missing)}')
    mutants = [x for x in MUTANTS if x.id in args.only]
  if args.list:
    for x in mutants:
      print(f'{x.id:34} {x.file:22} {x.description}')
    return 0
  for x in mutants:  # every snippet applies, and the mutant still parses
    mutated = _apply((ROOT / 'optax_adam_mini' / x.file).read_text(), x)
    compile(mutated, x.file, 'exec')
  if args.check:
    print(f'{len(mutants)} mutants apply.')
    return 0

  with tempfile.TemporaryDirectory(prefix='adam_mini_mutants_') as tmp:
    workdir = Path(tmp)
    _copy_repo(workdir)
    if args.baseline:
      tiers = sorted({t for x in mutants for t in _tiers(x)})
      failed = 0
      for tier in tiers:
        start = time.time()
        rc, output = _pytest(workdir, tier)
        failed += rc != 0
        print(f'rc={rc} {time.time() - start:6.1f}s {" ".join(tier)}')
        if rc != 0:
          print(output[-3000:])
      return int(failed > 0)
    done = _load() if args.resume or args.only else {}
    if args.resume:
      mutants = [x for x in mutants if x.id not in done]

    def save(results):
      merged = {**done, **{r['id']: r for r in results}}
      ordered = [merged[x.id] for x in MUTANTS if x.id in merged]
      RESULTS.write_text(
        json.dumps({'summary': summary(ordered), 'mutants': ordered}, indent=2)
        + '\n'
      )

    run(mutants, workdir, save)
  print(json.dumps(json.loads(RESULTS.read_text())['summary'], indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
