"""The documentation site builds with warnings as errors, offline, and shows what it should.

Marked ``docs`` (deselect locally with ``-m "not docs"``); CI installs the ``docs`` extra and
runs it. It builds ``docs/`` into a temporary folder in a subprocess whose sockets refuse to
connect, so a build that needs the network (intersphinx, a remote image, a notebook run)
fails here, and then checks the result: every name of ``jacobians.__all__`` in the API
reference's inventory, every notebook rendered with its figures, no page loading a script,
a style sheet or a font from another host, and MathJax served from the build itself.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import textwrap
import zlib

import pytest

import jacobians

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.docs

OFFLINE_BUILD = textwrap.dedent(
    """
    import socket, sys

    def refuse(*args, **kwargs):
        raise OSError("the documentation build must not use the network")

    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse

    from sphinx.cmd.build import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx", reason="Sphinx is not installed: python -m pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("docs") / "html"
    cmd = [sys.executable, "-c", OFFLINE_BUILD, "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"sphinx -W failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_build_passes_with_warnings_as_errors(site):
    for page in ("index", "getting-started", "concepts", "second-order", "performance", "api/index", "search"):
        assert (site / f"{page}.html").is_file(), page


def _inventory(path):
    """``{name: uri}`` of a Sphinx ``objects.inv`` (version 2: four header lines, then zlib)."""
    lines = path.read_bytes().split(b"\n", 4)
    assert lines[0] == b"# Sphinx inventory version 2", lines[0]
    entries = zlib.decompress(lines[4]).decode("utf-8").splitlines()
    found = {}
    for line in entries:
        m = re.match(r"(.+?)\s+(\S+):(\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
        if m:
            name, uri = m.group(1), m.group(5)
            found[name] = uri.replace("$", name)
    return found


def test_every_public_name_is_in_the_api_reference(site):
    documented = _inventory(site / "objects.inv")
    missing = [name for name in jacobians.__all__ if f"jacobians.{name}" not in documented]
    assert not missing, f"names of jacobians.__all__ not in the API reference (docs/api/*.md): {missing}"
    for name in jacobians.__all__:
        assert documented[f"jacobians.{name}"].startswith("api/"), name


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_rendered_with_its_figures(site, notebook):
    page = site / "notebooks" / f"{notebook.stem}.html"
    assert page.is_file(), f"{notebook.name} is not on the site (docs/notebooks links to notebooks/)"
    saved = json.loads(notebook.read_text(encoding="utf-8"))
    figures = sum("image/png" in out.get("data", {}) for cell in saved["cells"] for out in cell.get("outputs", []))
    html = page.read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) >= figures, f"{notebook.name}: {figures} saved figures, {len(images)} images on its page"
    for src in images:
        assert (page.parent / src).resolve().is_file(), f"{notebook.name}: image {src} missing from the build"


def test_pages_use_nothing_from_another_host(site):
    remote = re.compile(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="(?:https?:)?//', re.I)
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert not remote.search(html), f"{page.relative_to(site)} loads an asset from another host"
    for css in (site / "_static").glob("*.css"):
        assert not re.search(r"@import\s+url\((['\"]?)https?:", css.read_text(encoding="utf-8")), css.name


def test_math_is_rendered_by_a_local_mathjax(site):
    html = (site / "second-order.html").read_text(encoding="utf-8")
    assert 'src="_static/mathjax/tex-chtml.js' in html
    assert html.count('class="math') >= 3
    mathjax = site / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
