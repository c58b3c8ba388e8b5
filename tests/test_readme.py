"""The README's configuration reference stays true to the code."""

from dataclasses import fields

from lavis.common.config import RunConfig
from tests.conftest import REPO


def test_every_run_key_is_documented():
    readme = (REPO / "README.md").read_text()
    undocumented = [f.name for f in fields(RunConfig) if f"| `{f.name}` |" not in readme]
    assert not undocumented, f"README's run: table lacks {undocumented}"


def test_readme_starts_with_the_two_commands():
    head = (REPO / "README.md").read_text()[:800]
    assert "bash run_scripts/demo.sh" in head and "bash run_scripts/test.sh" in head
