"""Notebook housekeeping for authors: strip outputs, or build a notebook from a cell list.

    python tools/nbtool.py strip book/*.ipynb

The book stores notebooks without outputs, every cell with its own id (tests/test_notebooks.py
enforces both).
"""

from __future__ import annotations

import json
import sys
import warnings

import nbformat


def strip(path: str) -> bool:
    """Drop outputs and execution metadata; give every cell a unique id (nbformat fills in a
    missing or repeated one as it reads, so the file is rewritten with the filled-in ids)."""
    with open(path, encoding="utf-8") as f:
        stored = [c.get("id") for c in json.load(f)["cells"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the id corrections below are the point, not news
        nb = nbformat.read(path, as_version=4)
    changed = [c.get("id") for c in nb.cells] != stored
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.outputs or cell.execution_count is not None:
                changed = True
            cell.outputs = []
            cell.execution_count = None
        if "id" in cell and cell.metadata.get("execution"):
            cell.metadata.pop("execution")
            changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def build(cells, path: str) -> None:
    """Write a notebook from ``[(kind, source, tags), ...]`` with kind 'md' or 'code'."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, src, tags in cells:
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        cell = make(src.strip("\n"))
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, path)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        sys.exit(__doc__)
    for p in sys.argv[2:]:
        print(("stripped " if strip(p) else "clean    ") + p)
