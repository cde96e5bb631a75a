"""Live: where a model library is importable, its trees match the fixtures.

The default environment has none of these libraries (they need their own,
conflicting versions; see README.md beside this file), so these tests skip
there. In a library's own environment they rebuild its trees with its own
init and check that every fixture of it still holds the same leaves: paths,
shapes, dtypes and wrappers. Then ``test_real_models.py`` holds for the
library as installed.
"""

import importlib

import pytest

from tests.real_models import harness

# The module each builder needs; its fixtures' folder is the library's name.
LIBRARIES = {
  'gemma': 'gemma',
  'maxtext': 'maxtext',
  'penzai': 'penzai',
  'transformers': 'transformers',
  'equinox': 'equinox',
  'tunix': 'tunix',
  'flax_examples_gemma': 'flax',
  'bonsai': 'bonsai',
  'levanter': 'levanter',
  'easydel': 'easydel',
}


@pytest.mark.parametrize('library', sorted(LIBRARIES))
def test_rebuilt_trees_match_the_fixtures(library):
  pytest.importorskip(LIBRARIES[library])
  try:
    builder = importlib.import_module(f'tests.real_models.build_{library}')
    fixtures = builder.build()
  except (ImportError, OSError) as error:  # a checkout the builder needs
    pytest.skip(f'{library} builder cannot run here: {error}')
  stored = {
    name.split('/', 1)[1]: harness.load(name)
    for name in harness.fixture_names()
    if name.startswith(f'{library}/')
  }
  built = {fixture['name']: fixture for fixture in fixtures}
  assert set(built) == set(stored)
  for name, fixture in built.items():
    rebuilt = {k: v for k, v in fixture.items() if k != 'name'}
    assert rebuilt['leaves'] == stored[name]['leaves'], name
