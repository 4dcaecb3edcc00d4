"""Every ```python block of README.md and of the documentation pages (docs/**/*.md) runs as
pasted, each in a fresh namespace, so that no example can drift from the code.

The notebooks rendered on the site are run by ``test_notebooks.py``; the build itself by
``test_docs_build.py``.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README] + sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "notebooks" not in p.parts)
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def _blocks(path):
    return FENCE.findall(path.read_text(encoding="utf-8"))


#: what an example may import from an optional extra (dask: `dask`; fast: numba; notebooks:
#: matplotlib); its block is skipped, saying so, where the extra is not installed
OPTIONAL = {"dask", "distributed", "numba", "matplotlib"}
IMPORTED = re.compile(r"^\s*(?:import|from)\s+(\w+)", flags=re.M)

BLOCKS = [(path.relative_to(ROOT).as_posix(), i, source) for path in PAGES for i, source in enumerate(_blocks(path))]


def test_readme_has_python_examples():
    assert len(_blocks(README)) >= 1


def test_docs_have_python_examples():
    pages = {name for name, _, _ in BLOCKS if name.startswith("docs/")}
    for page in ("getting-started", "concepts", "heads", "custom", "verification", "second-order", "last-layer", "dask"):
        assert f"docs/{page}.md" in pages, f"docs/{page}.md has no ```python block"


def test_no_other_python_fences():
    """Only ```python fences are run: a ```py or ```{code-block} python example would be skipped."""
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^```(py|python3|ipython|\{code-block\}\s*python|\{code\}\s*python)\s*$", text, flags=re.M), path


@pytest.mark.parametrize(
    ("page", "index", "source"), BLOCKS, ids=[f"{page}:block{i}" for page, i, _ in BLOCKS]
)
def test_block_runs(page, index, source, restore_registries, capsys):
    for module in sorted(set(IMPORTED.findall(source)) & OPTIONAL):
        pytest.importorskip(module, reason=f"the example imports {module}, an optional extra that is not installed")
    code = compile(source, f"{page} (python block {index})", "exec")
    exec(code, {"__name__": "__main__"})  # as pasted into a script (the Dask example guards its cluster)
    capsys.readouterr()  # the examples print; what they assert is what counts
