"""Build the notebooks from their Python sources and execute them, saving the outputs.

Each notebook ``notebooks/NN_name.ipynb`` is generated from ``notebooks/src/NN_name.py``,
a script in the "percent" format (as jupytext writes it): ``# %%`` starts a code cell,
``# %% [markdown]`` a markdown cell whose lines are comments. Edit the source, then run

    python notebooks/build.py              # rebuild and execute every notebook
    python notebooks/build.py 03 05        # only the notebooks whose names contain "03" or "05"

(needs the ``notebooks`` extra: ``python -m pip install -e '.[notebooks]'``). Each notebook
runs top to bottom in a fresh ``python3`` kernel with matplotlib's inline backend, so the
saved file shows its figures on a code host. The output is kept reproducible: cell ids
are derived from the cell's position, execution counts run 1, 2, 3, ..., consecutive
prints are merged into one output, and no timing metadata is recorded. A cell that raises, or writes to stderr (a warning), stops the build.

``tests/test_notebooks.py`` executes every notebook and checks that the saved notebooks
match these sources.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
CELL_TIMEOUT = 120  # seconds per cell

_MARKER = "# %%"
_MARKDOWN_MARKER = "# %% [markdown]"


def parse_source(text: str) -> list[tuple[str, str]]:
    """Split a percent-format script into ``[(cell_type, source), ...]``.

    ``cell_type`` is ``'code'`` or ``'markdown'``; markdown lines lose their leading
    ``# `` (or ``#``). Blank lines around each cell are dropped.
    """
    cells: list[tuple[str, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.rstrip()
        if stripped == _MARKDOWN_MARKER:
            cells.append(("markdown", []))
        elif stripped == _MARKER:
            cells.append(("code", []))
        elif not cells:
            if stripped:
                raise ValueError(f"line {lineno}: text before the first '# %%' cell marker: {line!r}")
        elif cells[-1][0] == "markdown":
            if stripped and not stripped.startswith("#"):
                raise ValueError(f"line {lineno}: a markdown cell's lines must be comments; got {line!r}")
            cells[-1][1].append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
        else:
            cells[-1][1].append(stripped)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def new_notebook(source_path: Path) -> nbformat.NotebookNode:
    """An unexecuted notebook with the cells of ``source_path`` and stable cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, (kind, source) in enumerate(parse_source(source_path.read_text(encoding="utf-8"))):
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        nb.cells.append(make(source, id=f"cell-{i:02d}"))
    return nb


def execute(nb: nbformat.NotebookNode, *, cwd: Path = HERE, env: dict | None = None) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel (in place); raise on an error."""
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)
    return nb


def _merge_streams(cell) -> None:
    """Join consecutive stream outputs of one name (how the kernel chunks prints varies)."""
    merged = []
    for out in cell.get("outputs", []):
        if merged and out.output_type == "stream" and merged[-1].output_type == "stream" and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    cell.outputs = merged


def build(source_path: Path) -> Path:
    """Generate, execute and save the notebook of ``source_path``; return its path."""
    nb = new_notebook(source_path)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's inline backend
    execute(nb, env=env)
    for cell in nb.cells:
        if cell.cell_type == "code":
            _merge_streams(cell)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                raise RuntimeError(f"{source_path.name}, cell {cell.id} wrote to stderr:\n{out.text}")
    nb.metadata.pop("widgets", None)
    target = HERE / (source_path.stem + ".ipynb")
    nbformat.validate(nb)
    nbformat.write(nb, target)
    return target


def main(argv: list[str]) -> int:
    sources = sorted(SOURCES.glob("*.py"))
    if argv:
        sources = [p for p in sources if any(a in p.stem for a in argv)]
        if not sources:
            print(f"no notebook source matches {argv}; sources: {[p.stem for p in SOURCES.glob('*.py')]}")
            return 2
    for path in sources:
        target = build(path)
        print(f"{target.relative_to(HERE.parent)}: {target.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
