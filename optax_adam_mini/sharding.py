"""Where the optimizer state lives on a device mesh: :func:`state_shardings`.

Adam-mini's state is laid out like the params: ``mu`` takes its param's
sharding (a quantized ``mu``'s codes and scales both do); the reduced ``v`` keeps the param's mesh axes on the axes it keeps
(the head axis of a split ``(heads, head_dim)`` view included) and has none on
the axes it averages over; the step count is replicated. A mesh axis that does
not divide a kept axis (a shard that holds part of a head) is dropped there,
so ``v`` is replicated along it.

``optax.tree.map_params`` cannot give these: it copies a param's spec onto
every state leaf that mirrors the param tree, and ``v`` mirrors the tree with
smaller (or, for heads, higher-rank) leaves.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ['state_shardings']


def state_shardings(tx_or_init_fn: Any, params: Any, shardings: Any = None):
  """The shardings of ``tx.init(params)``, derived from the params' shardings.

  The state's structure is that of ``jax.eval_shape(tx.init, params)``, for
  any optax transformation: Adam-mini alone or inside ``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optax.masked``, and
  other optimizers too. Each leaf's sharding is the one JAX's sharding-aware
  types give it when ``init`` is traced with the params sharded over the same
  mesh in Explicit mode, so it is exactly the layout ``update`` produces:

  * state that mirrors a param (Adam-mini's ``mu``, accumulators) gets the
    param's sharding; so do a quantized ``mu``'s codes and per-group scales
    (its groups never cross a shard: where the param's shards would cut one,
    this raises a ``ValueError`` naming the leaf);
  * Adam-mini's ``v`` gets the param's mesh axes on the axes a block keeps,
    none on the axes it averages over (a param ``P('fsdp', 'tp')`` of shape
    ``(D, F)`` with one ``v`` per output neuron gives ``v`` of shape
    ``(1, F)`` with ``P(None, 'tp')``; a query kernel ``(D, H * Dh)`` with
    ``P(None, 'tp')`` gives ``v`` of shape ``(1, H, 1)`` with
    ``P(None, 'tp', None)``);
  * scalars such as the step count are replicated.

  Use it for ``out_shardings`` of a jitted ``init`` (in Auto mode a jitted
  ``init`` otherwise replicates the whole state), for ``device_put``, or as
  the target of a checkpoint restore.

  Args:
    tx_or_init_fn: an optax ``GradientTransformation`` (anything with an
      ``init``) or an init function.
    params: the params: ``jax.Array``s, or ``jax.ShapeDtypeStruct``s with
      ``sharding=``, on one mesh. Leaves without a ``NamedSharding`` count as
      replicated.
    shardings: optional; a pytree like ``params`` of ``NamedSharding`` (or
      ``PartitionSpec`` under ``jax.set_mesh``) to use instead of the
      params' own.

  Returns:
    A pytree of ``NamedSharding`` with the structure of
    ``jax.eval_shape(tx.init, params)``, on the params' mesh.

  Raises:
    ValueError: if the params lie on different meshes, or no mesh is found.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> from optax_adam_mini import adam_mini, state_shardings
    >>> mesh = jax.make_mesh((1,), ('tp',))
    >>> params = {'mlp': {'up_proj': {'kernel': jax.ShapeDtypeStruct(
    ...     (4, 8), jnp.float32, sharding=NamedSharding(mesh, P(None, 'tp')))}}}
    >>> tx = adam_mini(1e-3)
    >>> shardings = state_shardings(tx, params)
    >>> shardings[0].v['mlp']['up_proj']['kernel'].spec == P(None, 'tp')
    True
    >>> state = jax.jit(tx.init, out_shardings=shardings)(
    ...     {'mlp': {'up_proj': {'kernel': jnp.zeros((4, 8))}}})
  """
  init_fn = getattr(tx_or_init_fn, 'init', tx_or_init_fn)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  if shardings is None:
    given = [getattr(x, 'sharding', None) for x in leaves]
  else:
    given = treedef.flatten_up_to(shardings)
  mesh = _common_mesh(given)
  specs = [_spec_of(s) for s in given]
  explicit = _explicit_mesh(mesh)
  abstract = [
    jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(explicit, spec)
    )
    for x, spec in zip(leaves, specs)
  ]
  with _using_mesh(explicit):
    out = jax.eval_shape(
      init_fn, jax.tree_util.tree_unflatten(treedef, abstract)
    )

  def to_sharding(x):
    spec = getattr(getattr(x, 'sharding', None), 'spec', None)
    return NamedSharding(mesh, PartitionSpec() if spec is None else spec)

  return jax.tree.map(to_sharding, out)


def _common_mesh(shardings):
  """The one mesh of the given shardings (or of the context)."""
  meshes = []
  for s in shardings:
    if isinstance(s, NamedSharding) and all(m is not s.mesh for m in meshes):
      meshes.append(s.mesh)
  if not meshes:
    context = _context_mesh()
    if context is None:
      raise ValueError(
        'state_shardings: no NamedSharding among the params; give sharded '
        'params, shardings=, or call it under jax.set_mesh(mesh).'
      )
    return context
  first = meshes[0]
  for other in meshes[1:]:
    if _mesh_key(other) != _mesh_key(first):
      raise ValueError(
        f'state_shardings: the params lie on different meshes: {first} and '
        f'{other}.'
      )
  return first


def _mesh_key(mesh):
  devices = getattr(mesh, 'devices', None)
  ids = None
  if isinstance(mesh, jax.sharding.Mesh):
    ids = tuple(d.id for d in devices.flat)
  return tuple(mesh.axis_names), tuple(mesh.axis_sizes), ids


def _spec_of(sharding) -> PartitionSpec:
  if isinstance(sharding, NamedSharding):
    return sharding.spec
  if isinstance(sharding, PartitionSpec):
    return sharding
  return PartitionSpec()


def _context_mesh():
  """The mesh set by ``jax.set_mesh`` (concrete if possible), or ``None``."""
  for getter in ('get_mesh', 'get_abstract_mesh'):
    get = getattr(jax.sharding, getter, None)
    if get is None:
      continue
    try:
      mesh = get()
    except Exception:  # noqa: BLE001 - no mesh of this kind is set
      continue
    if mesh is not None and not getattr(mesh, 'empty', True):
      return mesh
  return None


def _explicit_mesh(mesh):
  """The same mesh with every axis Explicit (sharding in types)."""
  types = (jax.sharding.AxisType.Explicit,) * len(mesh.axis_names)
  if isinstance(mesh, jax.sharding.Mesh):
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=types)
  return mesh.update(axis_types=types)


def _using_mesh(mesh):
  """A context that sets ``mesh`` for tracing, across JAX versions."""
  if isinstance(mesh, jax.sharding.AbstractMesh):
    return jax.sharding.use_abstract_mesh(mesh)
  set_mesh = getattr(jax, 'set_mesh', None) or getattr(
    jax.sharding, 'use_mesh', None
  )
  if set_mesh is None:  # pragma: no cover - very old JAX
    return contextlib.nullcontext()
  return set_mesh(mesh)
