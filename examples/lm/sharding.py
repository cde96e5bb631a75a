"""How a run is laid out on a device mesh: one rule table, by weight name.

The mesh has three axes: ``data`` and ``fsdp`` split the batch, ``fsdp`` and
``tp`` split the weights. ``RULES`` says, for the layer that owns a kernel,
which mesh axis each of its two axes goes on (Megatron-style column and row
parallel layers); an axis that does not divide its dimension is dropped
there, and leading axes (stacked layers) stay unsplit. The optimizer state
follows its weight (``optax_adam_mini.state_shardings``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from examples.lm.config import UsageError
from optax_adam_mini.partition import path_names

MESH_AXES = ('data', 'fsdp', 'tp')
BATCH_AXES = ('data', 'fsdp')

_COLUMN = ('fsdp', 'tp')  # (in, out): output features over 'tp'
_ROW = ('tp', 'fsdp')  # input features over 'tp'
# Owner of a 2-D kernel -> mesh axes of (in, out). Unlisted kernels: FSDP
# only. A column-parallel layer's bias is split over 'tp' like its output.
RULES: dict[str, tuple[str | None, ...]] = {
  'q_proj': _COLUMN,
  'k_proj': _COLUMN,
  'v_proj': _COLUMN,
  'gate_proj': _COLUMN,
  'up_proj': _COLUMN,
  'lm_head': _COLUMN,
  'c_attn': _COLUMN,
  'c_fc': _COLUMN,
  'o_proj': _ROW,
  'down_proj': _ROW,
  'c_proj': _ROW,
}
_OTHER_KERNEL = ('fsdp', None)
_EMBEDDING = (None, 'fsdp')  # (vocab or positions, D)


def parse_mesh(spec: str | None, n_devices: int) -> dict[str, int]:
  """``'data=2,fsdp=2'`` -> ``{'data': 2, 'fsdp': 2, 'tp': 1}``.

  The default puts every device on ``data``.
  """
  if not spec:
    return {'data': n_devices, 'fsdp': 1, 'tp': 1}
  sizes = dict.fromkeys(MESH_AXES, 1)
  for part in spec.split(','):
    name, sep, value = part.strip().partition('=')
    if not sep or name not in MESH_AXES:
      raise UsageError(
        f'--mesh {spec!r}: expected comma-separated AXIS=SIZE with AXIS in '
        f'{MESH_AXES}'
      )
    try:
      sizes[name] = int(value)
    except ValueError:
      raise UsageError(
        f'--mesh {spec!r}: {value!r} is not an integer'
      ) from None
    if sizes[name] < 1:
      raise UsageError(f'--mesh {spec!r}: sizes must be >= 1')
  total = math.prod(sizes.values())
  if total > n_devices:
    raise UsageError(
      f'--mesh {spec!r} needs {total} devices but only {n_devices} are '
      'visible (on a CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N)'
    )
  return sizes


def make_mesh(sizes: dict[str, int]) -> jax.sharding.Mesh:
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(
    shape,
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    devices=jax.devices()[: math.prod(shape)],
  )


def default_mesh() -> jax.sharding.Mesh:
  """One device, with the usual axis names."""
  return make_mesh(parse_mesh(None, 1))


def _fit(axes: Sequence[str | None], shape: Sequence[int], mesh) -> P:
  """Pads leading axes and drops mesh axes that do not divide their dimension."""
  axes = (None,) * (len(shape) - len(axes)) + tuple(axes)
  return P(
    *(
      axis if axis is not None and dim % mesh.shape[axis] == 0 else None
      for axis, dim in zip(axes, shape)
    )
  )


def param_spec(path: Sequence[str], shape: Sequence[int], mesh) -> P:
  """The ``PartitionSpec`` of one weight, from its path and shape."""
  leaf, owner = path[-1], (path[-2] if len(path) > 1 else '')
  if leaf == 'kernel' and len(shape) >= 2:
    return _fit(RULES.get(owner, _OTHER_KERNEL), shape, mesh)
  if leaf == 'embedding' and len(shape) >= 2:
    return _fit(_EMBEDDING, shape, mesh)
  if leaf == 'bias' and RULES.get(owner) == _COLUMN:
    return _fit(('tp',), shape, mesh)
  return P()  # norm scales, other biases: replicated (tiny)


def param_shardings(params, mesh) -> dict:
  """A ``NamedSharding`` per weight of ``params`` (arrays or shapes)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(
      mesh, param_spec(path_names(path), x.shape, mesh)
    ),
    params,
  )


def batch_sharding(mesh) -> NamedSharding:
  """Token batches ``(B, T)``: the batch axis over ``data`` and ``fsdp``."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def check_batch(batch_size: int, mesh) -> None:
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if batch_size % shards:
    raise UsageError(
      f'--batch-size {batch_size} is not divisible by data*fsdp={shards}'
    )
