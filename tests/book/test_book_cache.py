"""The execution cache of make book / make pdf (tools/book_cache.py): a new folder whenever something that
changes a chapter's numbers without changing its code changes, and jupyter-cache's own key for the rest."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("book_cache", ROOT / "tools" / "book_cache.py")
book_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book_cache)


@pytest.fixture
def checkout(tmp_path):
    """A checkout with a library, committed data, pins, the book's config and a chapter."""
    (tmp_path / "deepmr_utils" / "book").mkdir(parents=True)
    (tmp_path / "deepmr_utils" / "mr.py").write_text("def ivw(): ...\n")
    (tmp_path / "deepmr_utils" / "book" / "config.py").write_text("SCALES = ('quick',)\n")
    (tmp_path / "book" / "data").mkdir(parents=True)
    (tmp_path / "book" / "data" / "study.csv").write_text("a,b\n1,2\n")
    (tmp_path / "requirements.txt").write_text("torch==2.13.0\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "_config.yml").write_text(yaml.safe_dump({"title": "t", "execute": {"execute_notebooks": "force"}}))
    (tmp_path / "book" / "ch.ipynb").write_text("{}")
    return tmp_path


def test_the_key_changes_with_the_scale_the_settings_the_library_the_data_and_the_pins(checkout):
    env = {"DEEPMR_SCALE": "default"}
    key = book_cache.cache_key(checkout, env)
    assert key.startswith("default-") and key == book_cache.cache_key(checkout, {})  # unset = default
    assert book_cache.cache_key(checkout, {"DEEPMR_SCALE": "quick"}).startswith("quick-")
    assert book_cache.cache_key(checkout, {**env, "DEEPMR_SEED_OFFSET": "1"}) != key
    # where tables go and whether bars show change no number
    assert book_cache.cache_key(checkout, {**env, "DEEPMR_RESULTS": "/x", "DEEPMR_PROGRESS": "0"}) == key
    (checkout / "deepmr_utils" / "__pycache__").mkdir()
    (checkout / "deepmr_utils" / "__pycache__" / "mr.cpython-311.pyc").write_bytes(b"\0")
    (checkout / "book" / "ch.ipynb").write_text('{"cells": []}')  # chapters are jupyter-cache's to key
    assert book_cache.cache_key(checkout, env) == key
    seen = {key}
    for path, text in [
        ("deepmr_utils/mr.py", "def ivw(): return 1\n"),
        ("deepmr_utils/book/config.py", "SCALES = ('quick', 'default')\n"),
        ("book/data/study.csv", "a,b\n1,3\n"),
        ("requirements.txt", "torch==2.14.0\n"),
        ("pyproject.toml", "[project]\nname = 'x'\n"),
    ]:
        (checkout / path).write_text(text)
        new = book_cache.cache_key(checkout, env)
        assert new not in seen, path
        seen.add(new)


def test_within_one_key_jupyter_cache_reruns_a_code_edit_and_keeps_a_prose_edit(tmp_path):
    from jupyter_cache import get_cache

    cache = get_cache(tmp_path / "jc")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A"), nbformat.v4.new_code_cell("x = 1")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    _, first = cache.create_hashed_notebook(nb)
    nb.cells[0].source = "# A chapter, reworded"
    assert cache.create_hashed_notebook(nb)[1] == first
    nb.cells[1].source = "x = 2"
    assert cache.create_hashed_notebook(nb)[1] != first


def test_the_config_executes_from_the_keys_cache_and_keeps_everything_else(checkout):
    path = book_cache.write_config(checkout, {"DEEPMR_SCALE": "quick"})
    key = book_cache.cache_key(checkout, {"DEEPMR_SCALE": "quick"})
    assert path == checkout / "_build" / "cache" / key / "_config.yml"
    config = yaml.safe_load(path.read_text())
    assert config["title"] == "t"
    assert config["execute"] == {"execute_notebooks": "cache", "cache": str(path.parent / "jupyter")}


def test_the_pages_that_describe_a_build_are_always_executed():
    for name in ("build_info", "summary"):
        meta = json.loads((ROOT / "book" / f"{name}.ipynb").read_text())["metadata"]
        assert meta["mystnb"]["execution_mode"] == "force", name


def test_publish_replaces_the_chapters_tables_and_leaves_other_folders(tmp_path):
    tables, results = tmp_path / "cache" / "results", tmp_path / "results"
    (tables / "simulation").mkdir(parents=True)
    (tables / "simulation" / "summary.csv").write_text("new\n")
    (results / "simulation").mkdir(parents=True)
    (results / "simulation" / "stale.csv").write_text("old\n")
    (results / "study4").mkdir()
    (results / "study4" / "round_none_000.csv").write_text("keep\n")
    assert book_cache.publish(tables, results) == ["simulation"]
    assert sorted(p.name for p in (results / "simulation").iterdir()) == ["summary.csv"]
    assert (results / "study4" / "round_none_000.csv").read_text() == "keep\n"
