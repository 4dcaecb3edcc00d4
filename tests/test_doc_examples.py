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
#: matplotlib; the array libraries of docs/backends.md); its block is skipped, saying so, where the extra is not installed
OPTIONAL = {"dask", "distributed", "numba", "matplotlib", "torch", "jax", "array_api_strict"}
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


# -- what fits on the built site ------------------------------------------------------------------

#: the widest code line the site shows without a scrollbar (furo: a 46em column, code at
#: 81.25%, ~90 monospace characters)
CODE_WIDTH = 88
#: display math wider than this many symbols is cut on the site (the last-layer equation was
#: cut at 66 estimated symbols; the widest shown whole has 43)
MATH_SYMBOLS = 48
ANY_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
DISPLAY_MATH = re.compile(r"^\$\$\n?(.*?)\$\$", flags=re.S | re.M)
#: commands that draw nothing of their own width (accents, fraction bars, fences, fonts)
_NO_WIDTH = {"frac", "dfrac", "tfrac", "tilde", "hat", "bar", "text", "operatorname", "mathrm", "mathbf",
             "mathcal", "boldsymbol", "bigl", "bigr", "Bigl", "Bigr", "big", "Big", "left", "right", "top",
             "begin", "end", "displaystyle", "limits"}
_FRAC = re.compile(r"\\[dt]?frac\s*(\{((?:[^{}]|\{[^{}]*\})*)\}|\w)\s*(\{((?:[^{}]|\{[^{}]*\})*)\}|\w)")


def math_symbols(tex: str) -> int:
    """An estimate of a display-math line's width in symbols: a command is one symbol (none
    for an accent or a font), ``\\quad`` two, ``\\qquad`` four, a fraction its wider part."""
    while (m := _FRAC.search(tex)) is not None:
        top = m.group(2) if m.group(2) is not None else m.group(1)
        bottom = m.group(4) if m.group(4) is not None else m.group(3)
        tex = tex[: m.start()] + "{" + max(top, bottom, key=math_symbols) + "}" + tex[m.end():]
    tex = re.sub(r"\\text\{([^}]*)\}", lambda m: "x" * len(m.group(1)), tex)
    tex = re.sub(r"\\(q?quad)\b", lambda m: "xxxx" if m.group(1) == "qquad" else "xx", tex)
    tex = re.sub(r"\\[,;! ]", "", tex)
    tex = re.sub(r"\\([a-zA-Z]+)", lambda m: "" if m.group(1) in _NO_WIDTH else "x", tex)
    return len(re.sub(r"[{}^_&\s]", "", tex))


def test_math_symbols_estimates_the_cut_equation_as_too_wide():
    cut = (r"G = \sum_n B_n \otimes \tilde\varphi_n \tilde\varphi_n^\top \quad (P \times P,\ P = K\,(D + 1)),"
           r"\qquad G \approx A \otimes B,\quad A = \sum_n B_n,\quad B = \frac1N \sum_n \tilde\varphi_n"
           r" \tilde\varphi_n^\top \ \text{(K-FAC)}.")
    assert math_symbols(cut) > MATH_SYMBOLS
    assert math_symbols(r"\frac{\partial E}{\partial z} = \frac{1}{N}\,\bigl(s - e_y\bigr)") == 10  # ∂z = N (s − e y)


def test_no_code_line_is_wider_than_the_site_shows():
    """```python and ```bash blocks (what a reader copies); program output (```text) is
    shown as the program prints it."""
    wide = []
    for path in PAGES:
        for lang, body in ANY_FENCE.findall(path.read_text(encoding="utf-8")):
            if lang in ("python", "bash"):
                wide += [f"{path.relative_to(ROOT)}: {len(line)}: {line}" for line in body.splitlines()
                         if len(line) > CODE_WIDTH]
    assert not wide, "\n".join(wide)


def test_no_display_math_is_wider_than_the_site_shows():
    wide = []
    for path in PAGES:
        for block in DISPLAY_MATH.findall(path.read_text(encoding="utf-8")):
            for line in re.split(r"\\\\", block):  # rows of an aligned block
                if math_symbols(line) > MATH_SYMBOLS:
                    wide.append(f"{path.relative_to(ROOT)}: {math_symbols(line)}: {' '.join(line.split())}")
    assert not wide, "\n".join(wide)


def test_pages_name_no_issue_numbers():
    """A reader cannot look an issue number up: say what was done instead."""
    named = []
    for path in PAGES + [ROOT / "benchmarks" / "README.md"]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bissues? #?\d+|#\d+\b", line, flags=re.I):
                named.append(f"{path.relative_to(ROOT)}:{n}: {line}")
    assert not named, "\n".join(named)


#: the page's text column (furo: 46em at 16px); MathJax's own measure of a display must fit
COLUMN_PX = 736
_MEASURE_JS = r"""
const lines = JSON.parse(require('fs').readFileSync(0, 'utf8'));
require(process.argv[1] + '/node-main.js').init({loader: {load: ['input/tex', 'output/svg']}})
  .then((MathJax) => {
    const px = lines.map((tex) => {
      const svg = MathJax.startup.adaptor.outerHTML(MathJax.tex2svg(tex, {display: true, em: 16, ex: 8}));
      return parseFloat(svg.match(/width="([\d.]+)ex"/)[1]) * 8;
    });
    console.log(JSON.stringify(px));
  });
"""


def test_display_math_fits_the_column_as_mathjax_lays_it_out():
    """The referee of ``math_symbols``: MathJax itself (node and the docs extra's MathJax)."""
    import json
    import shutil
    import subprocess

    mathjax = pytest.importorskip("mathjax", reason="the docs extra's MathJax is not installed")
    if shutil.which("node") is None:
        pytest.skip("node is not installed: MathJax cannot lay the equations out here")
    es5 = pathlib.Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    where, tex = [], []
    for path in PAGES:
        for block in DISPLAY_MATH.findall(path.read_text(encoding="utf-8")):
            where.append(f"{path.relative_to(ROOT)}: {' '.join(block.split())[:70]}")
            tex.append(block)
    proc = subprocess.run(["node", "-e", _MEASURE_JS, str(es5)], input=json.dumps(tex), capture_output=True,
                          text=True, timeout=120, check=True)
    widths = json.loads(proc.stdout)
    assert len(widths) == len(tex) > 5
    wide = [f"{w:.0f} px: {at}" for w, at in zip(widths, where) if w > COLUMN_PX - 40]
    assert not wide, "\n".join(wide)
