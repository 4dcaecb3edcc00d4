"""The notebooks in ``notebooks/`` run top to bottom headless, and their saved copies are sound.

Every ``notebooks/*.ipynb`` found is covered (a new notebook is picked up without editing
this file):

* it is executed in a fresh ``python3`` kernel with ``MPLBACKEND=Agg``, the way CI runs it
  (needs the ``notebooks`` extra: ipykernel, nbclient, nbformat, matplotlib); a cell that
  raises fails the test with the cell's traceback;
* the saved file, which is what a code host renders, is checked without running it: one
  clean top-to-bottom run (execution counts 1, 2, 3, ...), no errors or warnings in its
  outputs, a figure wherever a cell shows one, a small file, and cell sources equal to
  ``notebooks/src/<name>.py`` when the notebook is generated from one by
  ``notebooks/build.py``.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebooks extra (nbformat, nbclient, ipykernel, matplotlib) is not installed")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_FILE_BYTES = 400_000  # keep saved notebooks small: figures at modest dpi, no big arrays
MAX_PNG_BYTES = 150_000


def _load_builder():
    spec = importlib.util.spec_from_file_location("notebook_builder", NOTEBOOK_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(paths):
    return [p.name for p in paths]


def test_notebooks_found():
    names = {p.name for p in NOTEBOOKS}
    expected_names = ("01_softmax_jacobian", "02_swap_heads", "03_fast_path", "04_custom_loss", "05_numerics", "06_curvature",
                      "07_last_layer_laplace", "08_new_heads", "09_laplace_influence")
    for expected in expected_names:
        assert f"{expected}.ipynb" in names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    # a last cell reports the backend, to prove the run was headless
    nb.cells.append(nbformat.v4.new_code_cell("import matplotlib\nprint(matplotlib.get_backend().lower())"))
    # the builder's runner: a fresh python3 kernel; raises CellExecutionError if a cell raises
    _load_builder().execute(nb, cwd=NOTEBOOK_DIR, env={**os.environ, "MPLBACKEND": "Agg"})
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
    assert nb.cells[-1].outputs[0].text.strip() == "agg"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_saved_notebook_is_one_clean_run(path):
    assert path.stat().st_size <= MAX_FILE_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "a notebook without code"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        "saved outputs must come from one top-to-bottom run in a fresh kernel (python notebooks/build.py)"
    )
    for cell in code:
        assert "execution" not in cell.metadata, "no timing metadata in saved notebooks"
        for out in cell.outputs:
            assert out.output_type != "error", f"cell {cell.id} saved with an error"
            assert not (out.output_type == "stream" and out.name == "stderr"), (
                f"cell {cell.id} saved with output on stderr: {out.text[:200]}"
            )
        pngs = [out.data["image/png"] for out in cell.outputs if "image/png" in out.get("data", {})]
        if "plt.show()" in cell.source:
            assert pngs, f"cell {cell.id} shows a figure, but the saved notebook holds none"
        for png in pngs:
            assert len(base64.b64decode(png)) <= MAX_PNG_BYTES
    assert nb.metadata.kernelspec.name == "python3"


SOURCED = [p for p in NOTEBOOKS if (NOTEBOOK_DIR / "src" / f"{p.stem}.py").exists()]


@pytest.mark.parametrize("path", SOURCED, ids=_ids(SOURCED))
def test_saved_notebook_matches_its_source(path):
    builder = _load_builder()
    expected = builder.parse_source((NOTEBOOK_DIR / "src" / f"{path.stem}.py").read_text(encoding="utf-8"))
    nb = nbformat.read(path, as_version=4)
    saved = [(cell.cell_type, cell.source) for cell in nb.cells]
    assert saved == expected, f"{path.name} is out of date: run python notebooks/build.py {path.stem[:2]}"


def test_parse_source_splits_cells():
    builder = _load_builder()
    text = "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\nprint(x)\n\n\n# %%\ny = 2\n"
    assert builder.parse_source(text) == [("markdown", "# Title\n\ntext"), ("code", "x = 1\n\nprint(x)"), ("code", "y = 2")]
    with pytest.raises(ValueError, match="before the first"):
        builder.parse_source("x = 1\n# %%\n")
    with pytest.raises(ValueError, match="must be comments"):
        builder.parse_source("# %% [markdown]\nnot a comment\n")


def test_notebooks_import_only_the_public_api():
    """Notebooks use ``import jacobians as jac`` like a user, never a private module or attribute."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        source = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
        assert "import jacobians as jac" in source, path.name
        private = re.search(r"\w+\._[A-Za-z]\w*", source)  # a private module or attribute (dunders pass)
        assert private is None, f"{path.name} uses a private name: {private.group(0) if private else ''}"
