"""Adam-mini for JAX and Optax: Adam with one second moment per Hessian block.

The modules, in the order a reader needs them:

* :mod:`optax_adam_mini.block` -- what a block is (:class:`Block`) and the
  per-block reduction;
* :mod:`optax_adam_mini.partition` -- matching blocks to a pytree's leaves,
  and the static table of blocks the state keeps;
* :mod:`optax_adam_mini.layout` -- what each axis of a leaf is
  (:class:`Layout`) and the block that follows from it;
* :mod:`optax_adam_mini.annotations` -- what a tree says about its leaves
  (Flax, NNX, penzai and haliax axis names and labels);
* :mod:`optax_adam_mini.conventions` -- the names libraries give their params
  and axes;
* :mod:`optax_adam_mini.default_partition` -- which transformer leaf gets which
  layout, hence which block;
* :mod:`optax_adam_mini.transform` -- the update math and the optimizer state;
* :mod:`optax_adam_mini.quantize` -- an 8-bit or 4-bit first moment;
* :mod:`optax_adam_mini.sharding` and :mod:`optax_adam_mini.flax_metadata` --
  where the state lives on a mesh, and its Flax sharding names;
* :mod:`optax_adam_mini.report` -- a per-leaf report of layouts, blocks and
  memory.
"""

from optax_adam_mini.block import Block
from optax_adam_mini.default_partition import (
  Role,
  classify,
  default_partition,
  default_weight_decay_mask,
  describe,
  label_function,
)
from optax_adam_mini.layout import Layout, block_for
from optax_adam_mini.partition import BlockTable, Partition
from optax_adam_mini.quantize import MomentQuantization, QuantizedArray
from optax_adam_mini.report import PartitionReport, partition_report
from optax_adam_mini.sharding import state_shardings
from optax_adam_mini.transform import (
  ScaleByAdamMiniState,
  adam_mini,
  scale_by_adam_mini,
)

__version__ = '0.1.0'

__all__ = [
  'Block',
  'BlockTable',
  'Layout',
  'MomentQuantization',
  'Partition',
  'PartitionReport',
  'QuantizedArray',
  'Role',
  'ScaleByAdamMiniState',
  'adam_mini',
  'classify',
  'default_partition',
  'block_for',
  'default_weight_decay_mask',
  'describe',
  'label_function',
  'partition_report',
  'scale_by_adam_mini',
  'state_shardings',
]
