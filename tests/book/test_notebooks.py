"""House rules for the book's chapters (the notebooks themselves run under nbval)."""

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
# chapters are numbered; the other notebooks are pages built from them (results at a glance, build info)
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks under book/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; run `python tools/nbtool.py strip {path}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_its_own_id(path):
    """As stored: nbformat silently renames a repeated id on every read, so links to it break."""
    ids = [c.get("id") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    repeated = sorted({i for i in ids if ids.count(i) > 1 and i is not None})
    missing = [k for k, i in enumerate(ids) if i is None]
    assert not repeated and not missing, (
        f"{path.name}: repeated cell ids {repeated}, cells without an id {missing}; "
        f"run `python tools/nbtool.py strip {path.relative_to(ROOT)}`"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_reads_scale_and_checks_numbers(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "config.sizes(" in code, "every chapter takes its sizes from deepmr_utils.book.config"
    asserts = [c for c in nb.cells if c.cell_type == "code" and ("assert " in c.source or "claims.check(" in c.source)]
    assert asserts, "key numbers must be checked by assert cells"
    assert all("remove-cell" in c.metadata.get("tags", []) for c in asserts), "assert cells are hidden"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_every_chapter_is_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {c["file"] for c in toc["chapters"]}
    assert {f for f in files if f.startswith("book/")} == {f"book/{p.stem}" for p in NOTEBOOKS}
    assert {"glossary", "references"} <= files and (ROOT / "references.bib").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_stay_short(path):
    # d2l's rule: prose in markdown, reusable code in the library; a chapter's code cells stay readable
    nb = nbformat.read(path, as_version=4)
    long = [(i, c.source.count("\n") + 1) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    long = [(i, n) for i, n in long if n > 25]
    assert not long, f"{path.name}: code cells (index, lines) {long} are longer than 25 lines"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapters_teach(path):
    # a teacher's minimum: goals and run times up front, 3-5 exercises with folded solutions at the end
    nb = nbformat.read(path, as_version=4)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    goals = "What you will learn" in md[0] or "**You will**" in md[1]
    assert goals and "Run time" in md[1], f"{path.name}: no learning goals and run times at the top"
    tail = md[-1]
    assert "## Exercises" in tail and "{dropdown} Solutions" in tail, f"{path.name}: no exercises with solutions"
    exercises = tail.split("## Exercises")[1].split("```{dropdown}")[0]
    n = len(re.findall(r"^\d+\. ", exercises, flags=re.M))
    assert 3 <= n <= 5, f"{path.name}: {n} exercises (3-5 wanted)"


def test_pages_that_read_the_chapters_exist():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for c in toc["chapters"]]
    assert {"book/summary", "book/build_info", "instructors"} <= set(files)
    # the summary reads the chapters' results, so it must come after them
    assert max(files.index(f"book/{p.stem}") for p in CHAPTERS) < files.index("book/summary")


def _shown_lines(source: Path, pyobject: str | None, lines: str | None) -> int:
    text = source.read_text().splitlines()
    if pyobject:
        node = ast.parse("\n".join(text))
        for part in pyobject.split("."):
            node = next(n for n in ast.iter_child_nodes(node) if getattr(n, "name", None) == part)
        text = text[node.lineno - 1 : node.end_lineno]
    if lines:
        a, _, b = lines.partition("-")
        text = text[int(a) - 1 : int(b or a)]
    return len(text)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_library_excerpts_stay_short(path):
    # show the few lines that matter (d2l), not a 75-line function cut at the page's right edge
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for m in re.finditer(r"```\{literalinclude\} (\S+)\n((?::[\w-]+:.*\n)*)", text):
        opts = dict(re.findall(r":([\w-]+): (.*)", m.group(2)))
        n = _shown_lines((path.parent / m.group(1)).resolve(), opts.get("pyobject"), opts.get("lines"))
        assert 0 < n <= 40, f"{path.name}: {m.group(1)} {opts} shows {n} lines"
