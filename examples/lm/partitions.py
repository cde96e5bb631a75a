"""Adam-mini's block partitions by name: the library's, and the alternatives.

``--partition`` (``OptimizerConfig.partition``) names one of these; ``build``
turns the name into the library's ``partition=`` argument for a model. All
but ``elementwise`` and ``whole`` start from the library's own decisions
(``optax_adam_mini.describe``: each leaf's role, layout and default block)
and change the blocks of some roles, so they follow the model wherever the
default partition does:

================  =========================================================
name              blocks
================  =========================================================
default           the library's (the reference's rules): one ``v`` per head
                  for queries and keys, per output neuron for values,
                  attention outputs and MLPs, per token for embeddings and
                  the LM head, per norm scale
elementwise       one ``v`` per coordinate everywhere: plain AdamW
whole             one ``v`` per leaf
qk-neuron         as default, but queries and keys get one ``v`` per output
                  neuron, not per head (SlimAdam's finding for them:
                  compress along fan-in)
vom-input         as default, but values, attention outputs and MLPs get one
                  ``v`` per input neuron, averaged over fan-out (SlimAdam,
                  arXiv 2503.01843: these favour compressing along fan-out,
                  the opposite of the reference)
slim              the library's ``block_rules='slim'``: SlimAdam's rules by
                  layer type (qk-neuron and vom-input together, norm scales
                  elementwise, fused q|k|v by part)
adam:ROLE[+ROLE]  as default, but leaves of these roles are plain Adam
                  (elementwise): the role ablation. Roles: query, key, value,
                  attention_out, mlp, norm, embedding, output; attention is
                  query+key+value+attention_out
================  =========================================================

``OptimizerConfig.layouts`` (the library's ``layouts=``: blocks or layouts
by path pattern) applies on top of any of the describe-based ones; the
convergence study states a warm-up-built partition
(``optax_adam_mini.calibrate``) that way.
"""

from __future__ import annotations

import warnings

import jax

import optax_adam_mini
from examples.lm import config
from examples.lm.config import ModelConfig, OptimizerConfig, UsageError
from optax_adam_mini import Block, Role

# The roles an ``adam:`` name can make plain Adam.
ABLATION_ROLES = {
  'query': {Role.QUERY},
  'key': {Role.KEY},
  'value': {Role.VALUE},
  'attention_out': {Role.ATTENTION_OUT},
  'attention': {Role.QUERY, Role.KEY, Role.VALUE, Role.ATTENTION_OUT},
  'mlp': {Role.MLP},
  'norm': {Role.NORM},
  'embedding': {Role.EMBEDDING},
  'output': {Role.OUTPUT},
}
assert tuple(ABLATION_ROLES) == config.ABLATION_ROLES
STATIC = {
  'elementwise': Block.elementwise(),  # one v per coordinate
  'whole': Block.whole(),  # one v per leaf
}
# The library's default partition under its block rules (``block_rules=``).
LIBRARY_RULES = {'default': 'reference', 'slim': 'slim'}


def ablation_roles(name: str) -> set[Role]:
  """The roles ``'adam:query+key'`` makes plain Adam."""
  roles = set()
  for part in name.removeprefix('adam:').split('+'):
    roles |= ABLATION_ROLES[part]
  return roles


def per_neuron(block: Block) -> Block:
  """A per-head block made per output neuron: the head axis kept whole.

  >>> per_neuron(Block.heads(1, 64))
  Block.along(1)
  >>> per_neuron(Block.heads(2, 64, along=(0,)))
  Block.along(0, 2)
  """
  if block.parts:
    parts = [(size, per_neuron(rule)) for size, rule in block.parts]
    return Block.concat(block.concat_axis, parts)
  if block.head_axis is None:
    return block
  return Block.along(*sorted((*block.kept_axes, block.head_axis)))


# Axis kinds that are a role's inputs, where they are not 'in'.
_INPUT_KINDS = {Role.ATTENTION_OUT: {'heads', 'head_dim'}}


def per_input(decision) -> Block:
  """One ``v`` per input neuron (and stacked copy): averaged over fan-out.

  From the leaf's layout: its ``in`` axes (for an attention output also its
  heads) and ``layers`` are kept. A leaf without a layout keeps its block.
  """
  layout = decision.layout
  if layout is None or 'parts' in layout.axes:
    return decision.block
  kept = {'in', 'layers'} | _INPUT_KINDS.get(decision.role, set())
  return Block.along(*(a for a, kind in enumerate(layout.axes) if kind in kept))


def _fused_error(name, decision):
  return UsageError(
    f'--partition {name}: {"/".join(decision.path)} fuses q, k and v in one '
    'leaf (gpt2); this partition needs them apart (use a llama preset)'
  )


def _rule(name: str, decision) -> Block:
  """The block ``name`` gives the leaf the default partition decided."""
  role, block = decision.role, decision.block
  if name == 'default':
    return block
  if name.startswith('adam:'):
    roles = ablation_roles(name)
    if role is Role.FUSED_QKV and roles & {Role.QUERY, Role.KEY, Role.VALUE}:
      if {Role.QUERY, Role.KEY, Role.VALUE} <= roles:
        return Block.elementwise()
      raise _fused_error(name, decision)
    return Block.elementwise() if role in roles else block
  if role in (Role.QUERY, Role.KEY, Role.FUSED_QKV) and name == 'qk-neuron':
    block = per_neuron(block)
  if role in (Role.VALUE, Role.ATTENTION_OUT, Role.MLP) and name == 'vom-input':
    block = per_input(decision)
  if role is Role.FUSED_QKV and name == 'vom-input':
    raise _fused_error(name, decision)
  return block


def build(cfg: OptimizerConfig, model_cfg: ModelConfig):
  """``adam_mini``'s partition for ``cfg.partition`` on ``model_cfg``'s model.

  A ``Block`` for ``elementwise`` and ``whole``; ``None`` for the library's
  own (``default`` and ``slim``: ``adam_mini_kwargs`` passes their options);
  otherwise a label function (``params -> pytree of Block``) over the default
  partition's decisions with the model's head layout and ``cfg.layouts``.
  """
  config.check_partition(cfg.partition)
  if cfg.partition in STATIC:
    return STATIC[cfg.partition]
  if cfg.partition in LIBRARY_RULES:
    return None  # adam_mini's own default partition with these options
  options = _default_options(cfg, model_cfg)
  name = cfg.partition

  def label_function(params):
    decisions, messages = optax_adam_mini.describe(params, **options)
    for message in messages:
      warnings.warn(message, stacklevel=2)
    blocks = [_rule(name, d) for d in decisions]
    return jax.tree.unflatten(jax.tree.structure(params), blocks)

  return label_function


def adam_mini_kwargs(cfg: OptimizerConfig, model_cfg: ModelConfig) -> dict:
  """The block options of ``adam_mini`` (and ``partition_report``)."""
  partition = build(cfg, model_cfg)
  if partition is not None:
    return dict(partition=partition)
  return dict(
    _default_options(cfg, model_cfg),
    block_rules=LIBRARY_RULES[cfg.partition],
  )


def _default_options(cfg: OptimizerConfig, model_cfg: ModelConfig) -> dict:
  """The default partition's options for this model and config."""
  return dict(
    value_blocks=cfg.value_blocks,
    layouts=dict(cfg.layouts) or None,
    **model_cfg.partition_kwargs(),
  )
