"""Sphinx configuration of the jacobians documentation.

Build (from the repository root, no network needed)::

    python -m pip install -e '.[docs]' && python -m sphinx -W -b html docs docs/_build/html

The notebooks in ``notebooks/`` are rendered from their saved outputs (``docs/notebooks``
is a link to that folder; nothing is executed), the API reference comes from the numpydoc
docstrings, and MathJax is served from the build's own ``_static/mathjax`` (copied from
the ``django-static-mathjax`` package of the ``docs`` extra), so the pages need no CDN.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the jacobians of this checkout, installed or not

import jacobians  # noqa: E402

project = "jacobians"
author = "the jacobians authors"
copyright = "the jacobians authors, BSD-3-Clause"  # noqa: A001
release = version = jacobians.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_nb",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "notebooks/src", "notebooks/*.py", "**.ipynb_checkpoints"]
nitpicky = True  # a cross-reference that does not resolve is a warning, and -W makes it an error
nitpick_ignore_regex = [
    # no intersphinx (the build uses no network): outside names stay plain text
    ("py:class", r"(numpy|np|dask|distributed|collections|typing)\..*"),
    ("py:class", r"(ndarray|array_like|array-like|optional|callable|dtype|.*\bor\b.*)"),
    # internals that docstrings name but the public reference leaves out on purpose
    ("py:.*", r"jacobians\._.*"),
    ("py:.*", r"jacobians\.numerics\..*"),  # the bottom layer's modules: internals too
]

# -- the docstrings ------------------------------------------------------------------------
autodoc_typehints = "none"  # the numpydoc sections give the types
autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": True}  # every method of the API, docstring inherited or not
autosummary_generate = False
# jacobians.torch and jacobians.jax import their framework: mocked where it is not installed
autodoc_mock_imports = [m for m in ("torch", "jax") if importlib.util.find_spec(m) is None]
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- markdown pages and notebooks ----------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the saved outputs; the test suite runs the notebooks
nb_merge_streams = True

# -- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"jacobians {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# MathJax 3 from the docs extra's package, copied next to the pages: no CDN at read time
mathjax_path = "mathjax/tex-chtml.js"
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "ui", "a11y", "sre")


def _mathjax_source() -> pathlib.Path:
    try:
        import mathjax  # the django-static-mathjax distribution (MathJax 3.2)
    except ImportError as err:  # pragma: no cover - a missing docs extra
        raise RuntimeError("MathJax is not installed: python -m pip install -e '.[docs]'") from err
    es5 = pathlib.Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():  # pragma: no cover
        raise RuntimeError(f"no MathJax 3 tex-chtml.js under {es5}: reinstall the docs extra")
    return es5


def _copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = _mathjax_source(), pathlib.Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


NUMPYDOC_SECTIONS = ("Parameters", "Returns", "Notes", "Examples", "References", "See Also", "Warnings")


def _module_sections_as_rubrics(app, what, name, obj, options, lines) -> None:
    """numpydoc leaves a module's docstring alone: its ``Examples`` / ``-----`` would become a
    section of the page (two modules on the site, two "examples" labels); make it a rubric."""
    if what != "module":
        return
    for i in range(len(lines) - 1):
        title, rule = lines[i].strip(), lines[i + 1].strip()
        if title in NUMPYDOC_SECTIONS and rule and set(rule) == {"-"} and len(rule) == len(title):
            lines[i], lines[i + 1] = f".. rubric:: {title}", ""


def _comment_of(modname: str, attr: str) -> list[str] | None:
    from sphinx.pycode import ModuleAnalyzer, PycodeError

    try:
        analyzer = ModuleAnalyzer.for_module(modname)
        analyzer.analyze()
    except PycodeError:  # pragma: no cover - a module without source
        return None
    comment = analyzer.attr_docs.get(("", attr))
    return list(comment) if comment else None


def _comment_of_reexported_data(app, what, name, obj, options, lines) -> None:
    """autodoc reads a constant's ``#:`` comment in the module it is documented from only: a
    re-export (``jacobians.rules.PARTS`` is ``jacobians.rules.base.PARTS``) would show no text,
    or its type's docstring. Take the comment of the ``jacobians`` module that defines the very
    object, so each constant is described once, where it is assigned."""
    if what != "data" or not name.startswith("jacobians."):
        return
    modname, _, attr = name.rpartition(".")
    if _comment_of(modname, attr):
        return  # documented where it is defined: autodoc has its comment already
    for other in sorted(sys.modules):
        module = sys.modules[other]
        if other.startswith("jacobians.") and other != modname and getattr(module, attr, None) is obj:
            comment = _comment_of(other, attr)
            if comment:
                lines[:] = comment
                return


def setup(app):
    _mathjax_source()  # fail early, with the install command, when the extra is missing
    app.connect("build-finished", _copy_mathjax)
    app.connect("autodoc-process-docstring", _module_sections_as_rubrics)
    app.connect("autodoc-process-docstring", _comment_of_reexported_data)
