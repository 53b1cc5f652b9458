"""The theory documentation (docs/, mkdocs.yml): it builds strictly, and the code's citations of it resolve.

The code cites the documentation as ``docs/<page>.md#<anchor>``; the anchors are explicit heading ids
(``## Title {#anchor}``), see docs/index.md#citations.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "kerneleft"

CITATION = re.compile(r"docs/([\w/]+\.md)(?:#([\w-]+))?")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$")
ATTR_ID = re.compile(r"\{:?[^}]*?#([\w-]+)[^}]*\}$")
FENCE = re.compile(r"^(```|~~~)")

#: page -> anchors the code may cite (the documentation contract); removing one breaks the code's references
CITABLE = {
    "model.md": ["network", "depth-grid", "tensor-conventions"],
    "exact.md": ["conditional-gaussianity", "block-law", "identities"],
    "gonly.md": ["coefficients", "k0", "v4", "k1-tadpole", "neglected-moments", "discrete-depth", "chain"],
    "failure.md": ["transport", "source", "eps2", "validity-window"],
    "sigma.md": ["equations", "arrow-structure", "slaved-m", "rnum", "discrete-depth", "representations",
                 "convergence"],
    "estimators.md": ["ensembles", "drift-estimator", "control-variate", "standard-errors", "width-extrapolation",
                      "next-order-fits"],
    "numerics.md": ["closed-forms", "quadrature", "ill-conditioned", "overflow", "interrupts", "caches"],
    "reference.md": ["notation", "errors", "cli"],
    "architectures.md": ["branches", "kernel-maps", "samplers", "layernorm", "gonly-branches", "sigma-branches", "mlp"],
    "mlp.md": ["recursion", "relu-exact", "roberts-yaida"],
    "nextorder.md": ["scope", "clusters", "observables", "equations", "discrete", "convergence", "gonly", "mlp",
                     "predictions", "validation", "left"],
}


def slugify(text: str) -> str:
    """The heading id Python-Markdown's toc extension generates when no explicit id is given."""
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """Heading ids of a Markdown page: explicit ``{#id}`` attributes, else the toc slug (fenced code skipped)."""
    ids, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            explicit = ATTR_ID.search(m.group(1))
            ids.add(explicit.group(1) if explicit else slugify(m.group(1)))
    return ids


def citations() -> list[tuple[str, int, str, str | None]]:
    """(file relative to the repository, line, page, anchor or None) of every docs/ citation in kerneleft/, bench/."""
    out = []
    for path in sorted(PACKAGE.rglob("*")) + sorted((ROOT / "bench").glob("*.py")):
        if not path.is_file() or path.suffix not in (".py", ".toml", ".md", ".txt"):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            out.extend((str(path.relative_to(ROOT)), i, m.group(1), m.group(2)) for m in CITATION.finditer(line))
    return out


def test_anchor_parser_reads_explicit_ids_and_slugs(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title {#top}\n\n## Why `G` fails: transport\n\n```\n# not a heading {#no}\n```\n"
                    "### The ε² term {: #eps2 .x}\n", encoding="utf-8")
    assert anchors(page) == {"top", "why-g-fails-transport", "eps2"}


def test_citable_anchors_exist():
    """Every page and anchor of the documentation contract exists (the code may cite any of them)."""
    missing = [f"docs/{page}#{a}" for page, ids in CITABLE.items() for a in ids
               if not (DOCS / page).is_file() or a not in anchors(DOCS / page)]
    assert not missing, f"documented anchors missing: {missing}"


def test_code_citations_resolve():
    """Every ``docs/<page>.md#<anchor>`` cited in kerneleft/ names an existing page and heading id."""
    cites = citations()
    assert cites, "kerneleft/ cites no docs/ page (the citation pattern or the package path is wrong)"
    bad = []
    for file, line, page, anchor in cites:
        target = DOCS / page
        if not target.is_file():
            bad.append(f"{file}:{line}: docs/{page} does not exist")
        elif anchor is not None and anchor not in anchors(target):
            bad.append(f"{file}:{line}: docs/{page}#{anchor}: no such heading id")
    assert not bad, "broken documentation citations:\n" + "\n".join(bad)


def test_docs_are_self_contained():
    """The documentation refers to no file outside the repository."""
    outside = re.compile(r"THEORY\.md|INTERFACE\.md|seed\.txt")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(DOCS.rglob("*.md"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert not hits, f"references to files outside the repository: {hits}"


def test_code_cites_no_file_outside_the_repository():
    """No module or benchmark mentions THEORY.md, INTERFACE.md or a bare '§n' section: it cites
    docs/<page>.md#<anchor> instead."""
    bare = re.compile(r"THEORY\.md|INTERFACE\.md|§\s*\d")
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bare.search(line)]
    assert not hits, f"{len(hits)} outside or bare § citations, e.g. {hits[:5]}"


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` (never with ``-q``: it hides the warnings, and strict mode then passes)."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "-d", str(site)], cwd=config.parent, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mkdocs_available():
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("pymdownx") is None:
        pytest.skip("mkdocs / pymdown-extensions not installed (they are in the 'test' extra)")


def test_mkdocs_build_strict(mkdocs_available, tmp_path):
    """`mkdocs build --strict` succeeds: no broken link or anchor between pages, math handed to MathJax."""
    site = tmp_path / "site"
    run = _build(ROOT / "mkdocs.yml", site)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    for page in ["index.md", *CITABLE]:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), f"{page} was not rendered"
    gonly = (site / "gonly" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in gonly and 'id="neglected-moments"' in gonly


def test_mkdocs_build_rejects_a_broken_anchor(mkdocs_available, tmp_path):
    """The strict build is a real check: a link to a missing anchor makes it fail."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\nSee [nowhere](gonly.md#no-such-anchor).\n",
                     encoding="utf-8")
    run = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert run.returncode != 0 and "no-such-anchor" in run.stdout + run.stderr
