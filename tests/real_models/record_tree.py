"""Records a real parameter tree as a fixture (tests/real_models FIXTURES format).

Imported by the `build_<library>.py` modules, each in its own library's venv, so
it needs only jax and the standard library (never optax_adam_mini).
"""

import json
import pathlib
import platform
import sys
from importlib import metadata

import jax

FIXTURE_DIR = pathlib.Path(__file__).parent / 'fixtures'


def key_entry(key):
  """One jax key-path entry as the fixture's [kind, name] pair."""
  tree_util = jax.tree_util
  if isinstance(key, tree_util.DictKey):
    return ['dict', key.key]
  if isinstance(key, tree_util.GetAttrKey):
    return ['attr', key.name]
  if isinstance(key, tree_util.SequenceKey):
    return ['seq', key.idx]
  if isinstance(key, tree_util.FlattenedIndexKey):
    return ['flat', key.key]
  raise TypeError(f'unknown key-path entry {key!r}')


def jsonable(value):
  """A JSON-ready copy of config and metadata values (tuples and
  PartitionSpecs as lists, anything else unknown as its repr)."""
  if isinstance(value, (tuple, list, jax.sharding.PartitionSpec)):
    return [jsonable(v) for v in value]
  if isinstance(value, dict):
    return {str(k): jsonable(v) for k, v in value.items()}
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def describe_nnx_variable(variable):
  """The "wrappers" entry of a flax.nnx Variable: its type and metadata."""
  return {
    'type': f'flax.nnx.{type(variable).__name__}',
    'metadata': jsonable(variable.get_metadata()),
  }


def _json_dtype(dtype):
  return str(jax.numpy.dtype(dtype))


def record_leaves(tree, is_wrapper=None, describe=None, annotate=None):
  """Every array leaf of `tree` as a fixture leaf record.

  `is_wrapper(node)` tells a metadata-carrying pytree node (an nnx Variable, a
  haliax NamedArray, ...); `describe(node)` gives its "wrappers" entry. The
  recorded path runs from the root through the wrappers to the array, exactly
  as `jax.tree_util.tree_flatten_with_path` gives it on the whole tree.
  `annotate(path_keys, leaf)` may add free-form annotations.
  """
  is_wrapper = is_wrapper or (lambda node: False)
  records = []

  def visit(node, prefix, wrappers):
    def stop(x):
      return x is not node and is_wrapper(x)

    for path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=stop)[
      0
    ]:
      keys = prefix + list(path)
      if leaf is not node and is_wrapper(leaf):
        visit(leaf, keys, wrappers + [describe(leaf)])
        continue
      record = {
        'path': [key_entry(k) for k in keys],
        'shape': list(leaf.shape),
        'dtype': _json_dtype(leaf.dtype),
        'wrappers': wrappers,
      }
      if annotate is not None:
        extra = annotate(keys, leaf)
        if extra:
          record['annotations'] = extra
      records.append(record)

  if is_wrapper(tree):
    visit(tree, [], [describe(tree)])
  else:
    visit(tree, [], [])
  return records


def versions(*packages):
  """Installed versions of the named distributions."""
  return {name: metadata.version(name) for name in packages}


def python_version():
  return platform.python_version()


def dump_fixture(fixture):
  """JSON text of a fixture: one line per top-level key and per leaf (the
  layout make_fixtures.py writes, so either writer gives the same file)."""
  lines = []
  for key, value in fixture.items():
    if key == 'leaves':
      leaves = ',\n'.join('  ' + json.dumps(leaf) for leaf in value)
      lines.append(f'{json.dumps(key)}: [\n{leaves}\n]')
    else:
      lines.append(f'{json.dumps(key)}: {json.dumps(value)}')
  return '{\n' + ',\n'.join(lines) + '\n}\n'


def write_fixtures(library, fixtures):
  """Writes each fixture to fixtures/<library>/<name>.json; returns the paths."""
  out_dir = FIXTURE_DIR / library
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for fixture in fixtures:
    fixture = dict(fixture)
    path = out_dir / f'{fixture.pop("name")}.json'
    path.write_text(dump_fixture(fixture))
    written.append(path)
  return written


def main(library, build):
  """The `__main__` of a build module: builds and writes its fixtures."""
  fixtures = build()
  for path in write_fixtures(library, fixtures):
    print(
      path.relative_to(pathlib.Path.cwd())
      if path.is_relative_to(pathlib.Path.cwd())
      else path,
      file=sys.stdout,
    )
