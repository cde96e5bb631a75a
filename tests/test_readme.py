"""Every Python example in README.md runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), re.DOTALL)


def test_readme_has_examples():
  assert len(BLOCKS) >= 4


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_example_runs(index):
  # The blocks build on each other, as a reader runs them in order.
  namespace = {}
  for block in BLOCKS[: index + 1]:
    exec(compile(block, f'README.md block {index}', 'exec'), namespace)
