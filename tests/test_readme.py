"""Every ```python block of README.md runs as pasted, each in a fresh namespace."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize(("index", "source"), list(enumerate(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(index, source, restore_registries, capsys):
    code = compile(source, f"README.md (python block {index})", "exec")
    exec(code, {"__name__": "__main__"})  # as pasted into a script (the Dask example guards its cluster)
    capsys.readouterr()  # the examples print; what they assert is what counts
