"""The notebooks run top to bottom, and are stored as the generator writes them.

Each notebook runs in a fresh ``python3`` kernel (jupyter_client starts it
with this interpreter) from the ``notebooks/`` folder, where its install cell
finds the source tree and skips ``pip``.
"""

import importlib.util
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / 'notebooks'
NAMES = [
  'quickstart.ipynb',
  'partition_explorer.ipynb',
  'hessian_structure.ipynb',
]
TIMEOUT_S = 600  # per cell; each notebook takes a minute or two on 2 CPU cores


def _generator():
  spec = importlib.util.spec_from_file_location(
    'build_notebooks', NOTEBOOKS / 'build_notebooks.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _kernel_env(**extra):
  env = dict(os.environ)
  # conftest.py's 8 host devices are for the mesh tests; the notebooks use one.
  env.pop('XLA_FLAGS', None)
  env.update(extra)
  return env


def _execute(name, **env):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = NotebookClient(
    nb,
    timeout=TIMEOUT_S,
    kernel_name='python3',
    resources={'metadata': {'path': str(NOTEBOOKS)}},
  )
  client.execute(env=_kernel_env(**env))
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


def test_notebooks_match_generator_and_are_stripped():
  gen = _generator()
  assert sorted(gen.NOTEBOOKS) == sorted(NAMES)
  for name in NAMES:
    stored = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert stored == gen.build(name), (
      f'{name} is stale: run python notebooks/build_notebooks.py'
    )
    for cell in stored.cells:
      if cell.cell_type == 'code':
        assert cell.outputs == [] and cell.execution_count is None
    first = stored.cells[0].source
    assert (
      'https://colab.research.google.com/github/optax-adam-mini/'
      f'optax_adam_mini/blob/main/notebooks/{name}'
    ) in first
    assert stored.metadata.kernelspec.name == 'python3'


def test_quickstart():
  nb = _execute('quickstart.ipynb')
  text = _text_outputs(nb)
  assert 'examples/train_lm.py' in text
  assert 'Adam-mini / AdamW final validation loss' in text
  assert 'Llama-2-7B shape' in text
  assert _images(nb) >= 1


def test_quickstart_inline_model():
  """The Colab path: no examples/ folder, so the notebook defines the model."""
  nb = _execute('quickstart.ipynb', QUICKSTART_INLINE='1')
  text = _text_outputs(nb)
  assert 'model code from this notebook' in text
  assert 'Adam-mini / AdamW final validation loss' in text


def test_partition_explorer():
  nb = _execute('partition_explorer.ipynb')
  text = _text_outputs(nb)
  assert 'params/attn_0/query/kernel' in text  # Linen
  assert 'layers/0/attn/query/kernel' in text  # NNX
  assert 'step 200' in text
  assert _images(nb) >= 2


def test_hessian_structure():
  nb = _execute('hessian_structure.ipynb')
  assert 'mass in blocks' in _text_outputs(nb)
  assert _images(nb) >= 1


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, *sys.argv[1:]]))
