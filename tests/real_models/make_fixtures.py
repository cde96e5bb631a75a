"""Writes the real-model fixtures of one library (issue 11, FIXTURES.md).

  python tests/real_models/make_fixtures.py <library>

Run it in that library's own venv (see README.md beside this file). It imports
`build_<library>` from this folder and calls its `build()`, which returns a
list of fixture dicts; each is written to fixtures/<library>/<name>.json
(the 'name' key is the file name and is not stored). Nothing here imports
optax_adam_mini.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def dumps(fixture: dict) -> str:
  """Top-level keys one per line, each leaf record on one line (diffable)."""
  lines = []
  for key, value in fixture.items():
    if key == 'leaves':
      leaves = ',\n'.join('  ' + json.dumps(leaf) for leaf in value)
      lines.append(f'{json.dumps(key)}: [\n{leaves}\n]')
    else:
      lines.append(f'{json.dumps(key)}: {json.dumps(value)}')
  return '{\n' + ',\n'.join(lines) + '\n}\n'


def write(library: str, fixtures: list[dict]) -> list[pathlib.Path]:
  out_dir = HERE / 'fixtures' / library
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for fixture in fixtures:
    fixture = dict(fixture)
    name = fixture.pop('name')
    path = out_dir / f'{name}.json'
    path.write_text(dumps(fixture))
    written.append(path)
  return written


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit(__doc__)
  library = argv[1]
  sys.path.insert(0, str(HERE))
  builder = importlib.import_module(f'build_{library}')
  for path in write(library, builder.build()):
    print(path.relative_to(HERE))


if __name__ == '__main__':
  main(sys.argv)
