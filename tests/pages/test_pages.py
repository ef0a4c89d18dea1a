"""The rendered book as a reader's browser shows it (``make browser``, run by ``make test`` after the
quick build; see the Makefile).

Every page of the built HTML is opened in headless Chromium, offline (every host name resolves to
nothing), after its scripts ran (``--virtual-time-budget``). The test reads the DOM the browser
built, not the HTML Sphinx wrote, so it sees what MathJax did, and it reads Chromium's network log,
so it sees every request the page made. Each page must have:

* every math element typeset by the vendored MathJax (an ``mjx-container`` inside it), and no raw
  ``$...$`` or ``\\(`` left in the visible text;
* every image present: its file exists, is non-empty and decodes to a non-zero size;
* no traceback, error output or Sphinx/docutils error box;
* no stderr box, except in cells tagged ``explained-stderr`` (the chapter says why the reader sees it);
* no request to any remote host.

A screenshot of each page goes to ``DEEPMR_SCREENSHOTS`` (default ``_build/screenshots``), and one
row per page (math count, figure count, screenshot) to ``report.csv`` beside them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from bs4 import BeautifulSoup

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import browser  # noqa: E402  (tools/browser.py: the one place that starts Chromium)

HTML = Path(os.environ.get("DEEPMR_HTML", "_build/quick/_build/html")).resolve()
SHOTS = Path(os.environ.get("DEEPMR_SCREENSHOTS", "_build/screenshots")).resolve()
CHROMIUM = browser.executable()
SKIP = {"genindex.html", "search.html"}  # Sphinx's generated index and search pages, not the book's

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not (HTML / "index.html").exists(),
    reason=f"needs chromium and a built book at {HTML} (make book-quick)",
)


def _pages() -> list[Path]:
    if not HTML.is_dir():
        return []
    return sorted(
        p
        for p in HTML.rglob("*.html")
        if p.name not in SKIP and not any(part.startswith("_") for part in p.relative_to(HTML).parts)
    )


_RENDERED: dict[Path, tuple[str, list[str]]] = {}


def _render(page: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and every http(s) URL the page itself requested."""
    if page not in _RENDERED:
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "net.json"
            dom = browser.run(page, f"--log-net-log={log}", "--dump-dom", timeout=120).stdout
            net = json.loads(log.read_text())
        start = net["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        # the browser's own background requests carry no origin; the page's carry the page's ('null' for file:)
        remote = [
            e["params"]["url"]
            for e in net["events"]
            if e["type"] == start
            and e.get("params", {}).get("initiator") != "not an origin"
            and str(e.get("params", {}).get("url", "")).startswith(("http:", "https:"))
        ]
        _RENDERED[page] = (dom, remote)
    return _RENDERED[page]


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, JPEG or SVG file (0, 0 when it does not decode)."""
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if path.suffix == ".svg":
        return (1, 1) if b"<svg" in data[:2000] else (0, 0)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            marker, size = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + size
    return 0, 0


def _visible_text(soup: BeautifulSoup) -> str:
    body = soup.find("article") or soup.body
    for tag in body.find_all(["pre", "code", "script", "style", "mjx-container", "textarea"]):
        tag.decompose()
    return body.get_text(" ")


PAGES = _pages()
_REPORT: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    """Write one row per checked page to ``report.csv`` beside the screenshots."""
    yield
    if _REPORT:
        SHOTS.mkdir(parents=True, exist_ok=True)
        with open(SHOTS / "report.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["page", "math", "figures", "screenshot"])
            w.writeheader()
            w.writerows(_REPORT[k] for k in sorted(_REPORT))


def test_the_book_has_pages():
    names = {p.relative_to(HTML).as_posix() for p in PAGES}
    assert "index.html" in names and any(n.startswith("book/") for n in names), sorted(names)


def check(page: Path, shots: Path = SHOTS) -> tuple[list[str], dict]:
    """What is wrong with ``page`` as a reader's browser shows it, and its row of the report."""
    dom, remote = _render(page)
    soup = BeautifulSoup(dom, "html.parser")
    problems = []

    # math: every element Sphinx marked as math holds MathJax's output, and no raw TeX is left
    math = soup.select("span.math, div.math")
    untypeset = [m.get_text()[:60] for m in math if m.find("mjx-container") is None]
    if untypeset:
        problems.append(f"{len(untypeset)} of {len(math)} math elements not typeset, e.g. {untypeset[0]!r}")
    text = _visible_text(BeautifulSoup(dom, "html.parser"))
    raw = re.findall(r"\\\(|\\\[|\$\$|(?<![\w$])\$[^$\s][^$\n]{0,80}?\$(?![\w$])", text)
    if raw:
        problems.append(f"raw TeX in the text: {raw[:3]}")

    # figures: each <img> in the page body is a file that exists and decodes
    article = soup.find("article") or soup.body
    images = [img for img in article.find_all("img") if img.get("src")]
    for img in images:
        src = urlparse(img["src"])
        if src.scheme in ("http", "https"):
            problems.append(f"remote image {img['src']}")
            continue
        if src.scheme == "data":
            continue
        path = (page.parent / unquote(src.path)).resolve()
        if not path.is_file() or path.stat().st_size == 0 or min(_image_size(path)) <= 0:
            problems.append(f"image missing or empty: {img['src']}")

    # no tracebacks, error outputs or docutils error boxes
    for sel in ("div.output.traceback", "div.output.error", "div.system-message", "span.problematic"):
        if soup.select(sel):
            problems.append(f"{sel}: {soup.select(sel)[0].get_text()[:200]!r}")
    if "Traceback (most recent call last)" in dom:
        problems.append("a Python traceback is shown")

    # stderr boxes only where the chapter explains them
    for box in soup.select("div.output.stderr"):
        cell = box.find_parent("div", class_="cell")
        if cell is None or "tag_explained-stderr" not in cell.get("class", []):
            problems.append(f"unexplained stderr box: {box.get_text()[:200]!r}")

    if remote:
        problems.append(f"requests to remote hosts: {sorted(set(remote))[:5]}")

    shots.mkdir(parents=True, exist_ok=True)
    name = page.relative_to(HTML).as_posix() if page.is_relative_to(HTML) else page.name
    shot = shots / (name.replace("/", "__").removesuffix(".html") + ".png")
    browser.run(page, f"--screenshot={shot}", "--window-size=1280,1600", timeout=120)
    if not shot.is_file() or shot.stat().st_size == 0:
        problems.append("no screenshot written")
    return problems, {"page": name, "math": len(math), "figures": len(images), "screenshot": str(shot)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(HTML).as_posix())
def test_page(page: Path):
    problems, row = check(page)
    _REPORT[row["page"]] = row
    assert not problems, f"{row['page']}:\n  " + "\n  ".join(problems)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")
def test_the_check_catches_a_broken_page(tmp_path):
    """A page with each defect the check looks for: every one must be reported."""
    (tmp_path / "empty.png").write_bytes(b"")
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><article>"
        '<p>raw math $x + y$ here</p><span class="math notranslate">\\(a\\)</span>'
        '<img src="empty.png"><img src="missing.png">'
        '<div class="cell"><div class="output stderr"><pre>ISM: 40%|####</pre></div></div>'
        '<div class="output traceback"><pre>Traceback (most recent call last)</pre></div>'
        '<script src="https://cdn.example.org/lib.js"></script>'
        "</article></body></html>"
    )
    problems, _ = check(page, tmp_path / "shots")
    text = "\n".join(problems)
    for expected in ("not typeset", "raw TeX", "empty.png", "missing.png", "stderr box", "traceback",
                     "remote hosts"):  # fmt: skip
        assert expected in text, f"{expected!r} not reported; got:\n{text}"
