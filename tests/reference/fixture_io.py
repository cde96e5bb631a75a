"""Read/write the Adam-mini reference fixture (numpy only, no torch needed).

The fixture is a standard compressed ``.npz`` (readable with ``np.load``;
written with deflate level 9 and fixed timestamps so regeneration is
byte-reproducible).  To stay under
1 MB, all parameters/gradients of one snapshot are concatenated (flattened,
in ``meta["param_names"]`` order) into one vector, and float32 vectors are
stored *byte-shuffled*: a uint8 array ``(4, ...)`` whose plane ``b`` holds
byte ``b`` of every little-endian float32 (sign/exponent bytes compress much
better when grouped).  Gradients are bf16-exact, so their two low bytes are
zero and only planes 2 and 3 are stored (``(2, ...)``).  Everything is
lossless: decoding gives back bit-exact float32 values.

Arrays in the file (T = meta["num_steps"], N = total parameter count)::

    meta            0-d unicode array, JSON
    init            uint8 (4, N)      initial params
    grads           uint8 (2, T, N)   gradient fed at step t (row t-1)
    params_<traj>   uint8 (4, T, M)   params after step t (row t-1), only the
                                      leaves in meta["trajectories"][traj]
                                      ["stored_names"]; the others are bitwise
                                      equal to meta["trajectories"][traj]
                                      ["other_leaves_from"]
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence

import numpy as np

_F32 = np.dtype('<f4')


def encode_f32(a: np.ndarray, keep_bytes: int = 4) -> np.ndarray:
  """float32 array of shape S -> uint8 byte planes of shape (keep_bytes,) + S.

  Plane ``j`` holds byte ``4 - keep_bytes + j`` of every little-endian
  float32, so the last plane is the sign/exponent byte.  ``keep_bytes=2``
  keeps only the high 16 bits and requires them to be sufficient (i.e. the
  values are exactly representable in bfloat16).
  """
  a = np.ascontiguousarray(a, dtype=_F32)
  planes = np.moveaxis(a.view(np.uint8).reshape(a.shape + (4,)), -1, 0)
  if keep_bytes < 4 and np.any(planes[: 4 - keep_bytes]):
    raise ValueError(f'values are not exact in the top {keep_bytes} bytes')
  return np.ascontiguousarray(planes[4 - keep_bytes :])


def decode_f32(planes: np.ndarray) -> np.ndarray:
  """Inverse of :func:`encode_f32`."""
  planes = np.asarray(planes, dtype=np.uint8)
  k = planes.shape[0]
  full = np.zeros((4,) + planes.shape[1:], dtype=np.uint8)
  full[4 - k :] = planes
  return np.ascontiguousarray(np.moveaxis(full, 0, -1)).view(_F32)[..., 0]


def flatten(tree: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
  return np.concatenate(
    [np.asarray(tree[n], dtype=np.float32).ravel() for n in names]
  )


def unflatten(
  vec: np.ndarray, names: Sequence[str], shapes: dict[str, Sequence[int]]
):
  out, off = {}, 0
  for n in names:
    shape = tuple(shapes[n])
    size = int(np.prod(shape, dtype=np.int64))
    out[n] = vec[off : off + size].reshape(shape).copy()
    off += size
  if off != vec.shape[-1]:
    raise ValueError(f'size mismatch: {off} != {vec.shape[-1]}')
  return out


def save_fixture(path, meta, init, grads, trajectories) -> None:
  """Write a fixture.

  ``init``: {name: array}; ``grads``: list over steps of {name: array};
  ``trajectories``: {traj: (stored_names, list over steps of {name: array})}.
  ``meta`` must contain ``param_names`` and ``param_shapes``; the
  per-trajectory ``stored_names`` are added to ``meta["trajectories"]``.
  """
  names = meta['param_names']
  arrays = {
    'init': encode_f32(flatten(init, names)),
    'grads': encode_f32(
      np.stack([flatten(g, names) for g in grads]), keep_bytes=2
    ),
  }
  meta = json.loads(json.dumps(meta))
  meta.setdefault('trajectories', {})
  for traj, (stored, steps) in trajectories.items():
    arrays[f'params_{traj}'] = encode_f32(
      np.stack([flatten(p, stored) for p in steps])
    )
    info = meta['trajectories'].setdefault(traj, {})
    if isinstance(info, str):
      info = meta['trajectories'][traj] = {'description': info}
    info['stored_names'] = list(stored)
  arrays['meta'] = np.array(json.dumps(meta, sort_keys=True))
  _write_npz(path, arrays)


def _write_npz(path, arrays: dict[str, np.ndarray]) -> None:
  """Like ``np.savez_compressed`` but deflate level 9 and fixed timestamps."""
  with zipfile.ZipFile(path, 'w') as zf:
    for key in sorted(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(
        buf, np.asanyarray(arrays[key]), allow_pickle=False
      )
      info = zipfile.ZipInfo(key + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      zf.writestr(info, buf.getvalue(), compresslevel=9)


def load_fixture(path):
  """Load a fixture.

  Returns a dict with ``meta`` (parsed JSON), ``init`` ({name: float32
  array}), ``grads`` (list over steps t=1..T of {name: array}) and
  ``params`` ({traj: list over steps of {name: array}}, all leaves, the
  unstored ones filled in from the trajectory named in
  ``other_leaves_from``).  Arrays are in torch layout, keyed by torch name.
  """
  with np.load(path, allow_pickle=False) as z:
    meta = json.loads(str(z['meta']))
    names = meta['param_names']
    shapes = meta['param_shapes']
    init = unflatten(decode_f32(z['init']), names, shapes)
    grads = [unflatten(v, names, shapes) for v in decode_f32(z['grads'])]
    raw = {}
    for traj, info in meta['trajectories'].items():
      stored = info['stored_names']
      raw[traj] = [
        unflatten(v, stored, shapes) for v in decode_f32(z[f'params_{traj}'])
      ]
  params: dict[str, list[dict[str, np.ndarray]]] = {}
  pending = dict(meta['trajectories'])
  while pending:  # resolve "other_leaves_from" references
    progressed = False
    for traj, info in list(pending.items()):
      base = info.get('other_leaves_from')
      if base is not None and base not in params:
        continue
      steps = []
      for t, stored in enumerate(raw[traj]):
        full = {} if base is None else dict(params[base][t])
        full.update(stored)
        missing = set(names) - set(full)
        if missing:
          raise ValueError(f'trajectory {traj!r} misses {sorted(missing)}')
        steps.append({n: full[n] for n in names})
      params[traj] = steps
      del pending[traj]
      progressed = True
    if not progressed:
      raise ValueError(f'unresolvable trajectories: {sorted(pending)}')
  return {'meta': meta, 'init': init, 'grads': grads, 'params': params}
