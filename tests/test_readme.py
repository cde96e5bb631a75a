"""README.md: its Python examples run, its commands and figures hold."""

import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
TEXT = README.read_text()
BLOCKS = re.findall(r'```python\n(.*?)```', TEXT, re.DOTALL)
RESULTS = ROOT / 'examples' / 'results'


def test_readme_has_examples():
  assert len(BLOCKS) >= 4


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_example_runs(index):
  # The blocks build on each other, as a reader runs them in order.
  namespace = {}
  for block in BLOCKS[: index + 1]:
    exec(compile(block, f'README.md block {index}', 'exec'), namespace)


def test_readme_commands_are_what_users_and_ci_run():
  train, test = re.findall(r'```bash\n(.*?)```', TEXT, re.DOTALL)[:2]
  venv = 'python3 -m venv .venv && . .venv/bin/activate && pip install -q -e'
  assert train.strip() == f"{venv} '.[examples]' && python examples/train_lm.py"
  assert test.strip() == f"{venv} '.[test]' && python -m pytest -n 2"
  assert test.strip() in (ROOT / '.ci' / 'run').read_text()


def _json(name):
  return json.loads((RESULTS / name).read_text())


def test_readme_default_run_figures_are_those_of_the_results_files():
  text = ' '.join(TEXT.split())
  summary = _json('train_lm_default_summary.json')
  adamw = _json('train_lm_default_adamw_metrics.json')
  val = summary['val_loss']
  ratio = summary['val_loss_ratio_adam_mini_over_adamw']
  tokens_s = summary['tokens_per_second']
  state = summary['optimizer_state_bytes']
  figures = [
    f'{adamw["param_count"]:,} parameters, {adamw["steps"]} steps',
    f'validation loss {val["adam_mini"]:.4f} for Adam-mini against '
    f'{val["adamw"]:.4f} for AdamW ({ratio:.3f}x)',
    f'{tokens_s["adam_mini"] / 1e3:.1f}k against '
    f'{tokens_s["adamw"] / 1e3:.1f}k tokens/s',
    f'({state["adam_mini"] / 2**20:.2f} MiB against '
    f'{state["adamw"] / 2**20:.2f} MiB)',
  ]
  log = (RESULTS / 'train_lm_default.log').read_text()
  seconds = float(re.search(r'wall time of the command: ([\d.]+) s', log)[1])
  minutes, seconds = divmod(round(seconds), 60)
  figures.append(f'took {minutes} min {seconds} s here')
  for figure in figures:
    assert figure in text, figure
