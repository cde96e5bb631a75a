"""Assertions on whole pytrees: the same structure, then leaf by leaf.

>>> import numpy as np
>>> assert_trees_close({'a': np.ones(2)}, {'a': np.ones(2) + 1e-9})
>>> assert_trees_close({'a': np.ones(2)}, {'a': np.zeros(2)})
Traceback (most recent call last):
AssertionError: ...
>>> assert_same_shapes_and_dtypes({'a': np.ones(2)}, {'b': np.ones(2)})
Traceback (most recent call last):
AssertionError: tree structures differ...
>>> assert_same_shapes_and_dtypes([np.ones(2)], [np.ones(2, np.float32)])
Traceback (most recent call last):
AssertionError: [0]: (2,) float64 against (2,) float32
"""

from __future__ import annotations

import jax
import numpy as np


def _leaves(actual, expected):
  """``(path, actual leaf, expected leaf)`` after checking the structures."""
  structure, other = jax.tree.structure(actual), jax.tree.structure(expected)
  if structure != other:
    raise AssertionError(f'tree structures differ:\n{structure}\n{other}')
  paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(actual)]
  names = [jax.tree_util.keystr(path) for path in paths]
  return zip(names, jax.tree.leaves(actual), jax.tree.leaves(expected))


def assert_trees_close(actual, expected, rtol=1e-6, atol=0.0):
  """Every leaf within ``atol + rtol * |expected|`` (``assert_allclose``)."""
  for name, a, b in _leaves(actual, expected):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=name
    )


def assert_trees_equal(actual, expected):
  """Every leaf equal, value by value (``assert_array_equal``)."""
  for name, a, b in _leaves(actual, expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def assert_same_shapes_and_dtypes(actual, expected):
  """Every leaf of the same shape and dtype (arrays or ``ShapeDtypeStruct``)."""
  for name, a, b in _leaves(actual, expected):
    if (a.shape, a.dtype) != (b.shape, b.dtype):
      raise AssertionError(
        f'{name}: {a.shape} {a.dtype} against {b.shape} {b.dtype}'
      )
