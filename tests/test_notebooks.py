"""The notebooks are their jupytext sources, converted, and run top to bottom.

Each notebook is written as ``notebooks/<name>.py`` in jupytext's percent
format (ruff checks it like any other file), and ``notebooks/<name>.ipynb`` is
what jupytext makes of it, stored without outputs. After editing a source,
regenerate its notebook with

    jupytext --update --to ipynb notebooks/<name>.py

(``--update`` keeps the cell ids, so the notebook's diff shows only what
changed).

Each notebook runs in a fresh ``python3`` kernel (jupyter_client starts it
with this interpreter) from the ``notebooks/`` folder, with the repository
root first on its path: the library and ``examples.lm`` are importable, so the
Colab install cell does nothing. A notebook whose default run is long (the
quickstart's two 800-step trainings) runs here with shorter settings: its
settings cell is tagged ``parameters``, and the test adds a cell after it that
sets them again (papermill's convention); every cell still runs.
"""

import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / 'notebooks'
NAMES = ['quickstart', 'partition_explorer', 'hessian_structure']
TIMEOUT_S = 600  # per cell; each notebook takes a minute or two on 2 CPU cores
REGENERATE = 'jupytext --update --to ipynb notebooks/{name}.py'


def _converted(name):
  """The notebook jupytext writes from ``notebooks/<name>.py``."""
  source = jupytext.read(NOTEBOOKS / f'{name}.py')
  return nbformat.reads(jupytext.writes(source, fmt='ipynb'), as_version=4)


def _stored(name):
  return nbformat.read(NOTEBOOKS / f'{name}.ipynb', as_version=4)


def _without_id(cell):
  # jupytext gives a new cell random ids; `--update` keeps the stored ones.
  return {key: value for key, value in cell.items() if key != 'id'}


def _setup_cell(nb):
  """The code cell that holds REPO_URL (the Colab install cell)."""
  cells = [c for c in nb.cells if 'REPO_URL = ' in c.source]
  assert len(cells) == 1, 'expected one cell that sets REPO_URL'
  return cells[0]


def _kernel_env():
  env = dict(os.environ)
  # conftest.py's 8 host devices are for the mesh tests; the notebooks use one.
  env.pop('XLA_FLAGS', None)
  # The checkout under test first, as pytest's `pythonpath` has it.
  path = [str(ROOT), *filter(None, [env.get('PYTHONPATH')])]
  env['PYTHONPATH'] = os.pathsep.join(path)
  return env


def _with_parameters(nb, parameters):
  """``nb`` with a cell after its ``parameters`` cell that sets ``parameters``.

  Papermill's convention: the notebook's settings (its Colab form) are one cell
  tagged ``parameters``, and a run with other values adds a cell after it.
  """
  tagged = [
    i
    for i, cell in enumerate(nb.cells)
    if 'parameters' in cell.metadata.get('tags', [])
  ]
  assert len(tagged) == 1, 'expected one cell tagged "parameters"'
  cell = nb.cells[tagged[0]]
  for key in parameters:  # an override of a setting the notebook has
    assert re.search(rf'^{key} = ', cell.source, re.MULTILINE), key
  source = '\n'.join(f'{key} = {value!r}' for key, value in parameters.items())
  injected = nbformat.v4.new_code_cell(
    source, metadata={'tags': ['injected-parameters']}
  )
  nb.cells.insert(tagged[0] + 1, injected)
  return nb


def _execute(name, parameters=None):
  nb = _stored(name)
  if parameters:
    nb = _with_parameters(nb, parameters)
  client = NotebookClient(
    nb,
    timeout=TIMEOUT_S,
    kernel_name='python3',
    resources={'metadata': {'path': str(NOTEBOOKS)}},
  )
  client.execute(env=_kernel_env())
  return nb


def _text_outputs(nb):
  out = []
  for cell in nb.cells:
    for o in cell.get('outputs', []):
      if o.get('output_type') == 'stream':
        out.append(o['text'])
      elif 'data' in o and 'text/plain' in o['data']:
        out.append(o['data']['text/plain'])
  return '\n'.join(out)


def _images(nb):
  return sum(
    'image/png' in o.get('data', {})
    for cell in nb.cells
    for o in cell.get('outputs', [])
  )


def _assert_ran_this_checkout(nb):
  """The setup cell imported the package under test; JAX said where it ran."""
  text = _text_outputs(nb)
  where = re.search(r'^from (.+)$', text, re.MULTILINE)
  assert where, text[:500]
  assert Path(where.group(1)).resolve() == ROOT / 'optax_adam_mini'
  assert re.search(r'^JAX \S+ running on [A-Z]+$', text, re.MULTILINE)


def test_every_notebook_has_a_source():
  assert sorted(p.stem for p in NOTEBOOKS.glob('*.ipynb')) == sorted(NAMES)
  assert sorted(p.stem for p in NOTEBOOKS.glob('*.py')) == sorted(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_notebook_matches_its_source(name):
  stored, expected = _stored(name), _converted(name)
  stale = f'{name}.ipynb differs from {name}.py: run ' + REGENERATE.format(
    name=name
  )
  assert stored.metadata == expected.metadata, stale
  assert (stored.nbformat, stored.nbformat_minor) == (
    expected.nbformat,
    expected.nbformat_minor,
  ), stale
  assert len(stored.cells) == len(expected.cells), stale
  for i, (got, want) in enumerate(zip(stored.cells, expected.cells)):
    if got.cell_type == 'code':
      assert got.outputs == [] and got.execution_count is None, (
        f'{name}.ipynb cell {i} has outputs; store it without: '
        + REGENERATE.format(name=name).replace('--update ', '')
      )
    assert _without_id(got) == _without_id(want), f'cell {i}: {stale}'
  ids = [cell.id for cell in stored.cells]
  assert len(set(ids)) == len(ids), f'{name}.ipynb repeats a cell id'


def test_colab_setup_is_the_same_everywhere():
  """One install cell, and each badge opens its notebook in that repository."""
  setups = {name: _setup_cell(_stored(name)).source for name in NAMES}
  assert len(set(setups.values())) == 1, 'the setup cells differ'
  repo_url = re.search(r"REPO_URL = '([^']+)'", setups[NAMES[0]]).group(1)
  repo = repo_url.removeprefix('https://github.com/')
  for name in NAMES:
    title = _stored(name).cells[0].source
    badge = (
      f'https://colab.research.google.com/github/{repo}/blob/main/'
      f'notebooks/{name}.ipynb'
    )
    assert badge in title, f'{name}: the Colab badge should link to {badge}'


# The quickstart's training run, shortened: 2 x 100 steps instead of 2 x 800
# (the cells run all the same, and the figure has three validation points).
QUICKSTART_PARAMETERS = {'STEPS': 100, 'EVAL_EVERY': 50}


def test_quickstart():
  nb = _execute('quickstart', QUICKSTART_PARAMETERS)
  _assert_ran_this_checkout(nb)
  text = _text_outputs(nb)
  assert 'nnx.Optimizer step 2: loss' in text
  assert 'Adam-mini / AdamW final validation loss' in text
  assert 'llama2-7b preset' in text
  assert _images(nb) >= 1


def test_partition_explorer():
  nb = _execute('partition_explorer')
  _assert_ran_this_checkout(nb)
  text = _text_outputs(nb)
  assert 'params/attn_0/query/kernel' in text  # Linen
  assert 'layers/0/attn/query/kernel' in text  # NNX
  # A layout it cannot tell raises; a stated one gives per-layer head blocks.
  assert 'cannot tell which axis holds its stacked layers' in text
  assert re.search(r'query: in layers heads head_dim +v \(1, 16, 4, 1\)', text)
  assert re.search(r'mlp: out layers in +v \(48, 16, 1\)', text)
  assert 'step 200' in text
  assert _images(nb) >= 2


def test_hessian_structure():
  nb = _execute('hessian_structure')
  _assert_ran_this_checkout(nb)
  assert 'mass in blocks' in _text_outputs(nb)
  assert _images(nb) >= 1


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, *sys.argv[1:]]))
