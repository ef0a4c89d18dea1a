"""The execution cache of make book / make pdf (tools/book_cache.py): a new folder whenever something that
changes a chapter's numbers without changing its code changes, and jupyter-cache's own key for the rest."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("book_cache", ROOT / "tools" / "book_cache.py")
book_cache = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book_cache)
sys.modules["book_cache"] = book_cache  # so its worker function pickles by name for the process pool


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


def _chapter(path: Path, code: str, force: bool = False) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A"), nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if force:
        nb.metadata["mystnb"] = {"execution_mode": "force"}
    nbformat.write(nb, path)


def test_execute_runs_the_chapters_side_by_side_into_the_cache_the_build_reads(checkout, capsys):
    from jupyter_cache import get_cache

    book = checkout / "book"
    _chapter(book / "ch.ipynb", "import os\nthreads = os.environ['OMP_NUM_THREADS']\nthreads")
    _chapter(book / "broken.ipynb", "raise ValueError('a failing claim')")
    _chapter(book / "build_info.ipynb", "1 / 0", force=True)  # executed by the build itself, never cached
    toc = {"root": "index", "chapters": [{"file": f"book/{n}"} for n in ("ch", "broken", "build_info")]}
    (checkout / "_toc.yml").write_text(yaml.safe_dump(toc))
    config = book_cache.write_config(checkout, folder=Path("_build") / "quick" / "cache")
    assert config == checkout / "_build" / "quick" / "cache" / "_config.yml"
    failed, failed_capped = book_cache.execute(config, jobs=2, root=checkout)
    assert failed == ["book/broken.ipynb"] and failed_capped == []
    assert "book/broken.ipynb: failed, " in capsys.readouterr().out
    cache = get_cache(yaml.safe_load(config.read_text())["execute"]["cache"])
    # what the build's cache mode does: match the notebook as read from disk, code cells only
    record = cache.match_cache_notebook(nbformat.read(book / "ch.ipynb", as_version=4))
    _, executed = cache.merge_match_into_notebook(nbformat.read(book / "ch.ipynb", as_version=4))
    assert record.data["execution_seconds"] > 0
    assert executed.cells[1].outputs[0]["data"]["text/plain"] == repr(str(max(1, (os.cpu_count() or 1) // 2)))
    for name in ("broken", "build_info"):
        with pytest.raises(KeyError):
            cache.match_cache_notebook(nbformat.read(book / f"{name}.ipynb", as_version=4))
    # a second run finds the stored chapter and executes only the one that failed
    capsys.readouterr()
    assert book_cache.execute(config, jobs=2, root=checkout) == (["book/broken.ipynb"], [])
    assert "1 run(s)" in capsys.readouterr().out


CAP_PROBE = """import os, pathlib
pathlib.Path(os.environ['DEEPMR_RESULTS']).mkdir(parents=True, exist_ok=True)
(pathlib.Path(os.environ['DEEPMR_RESULTS']) / '{name}.txt').write_text(os.environ.get('ONEDNN_MAX_CPU_ISA', 'native'))
{fail}"""


def test_capped_runs_share_the_pool_see_the_cap_are_not_cached_and_report_failures(checkout, capsys):
    from jupyter_cache import get_cache

    book = checkout / "book"
    _chapter(book / "a.ipynb", CAP_PROBE.format(name="a", fail=""))
    flips = "assert os.environ.get('ONEDNN_MAX_CPU_ISA') != 'AVX2', 'flips'"  # passes natively, fails capped
    _chapter(book / "b.ipynb", CAP_PROBE.format(name="b", fail=flips))
    toc = {"root": "index", "chapters": [{"file": "book/a"}, {"file": "book/b"}]}
    (checkout / "_toc.yml").write_text(yaml.safe_dump(toc))
    config = book_cache.write_config(checkout, folder=Path("_build") / "quick" / "cache")
    capped_tables = checkout / "capped"
    os.environ["DEEPMR_RESULTS"], saved = str(checkout / "native"), os.environ.get("DEEPMR_RESULTS")
    try:
        # one worker, in the order b, b capped, a: a runs after the capped run in the same process
        failed, failed_capped = book_cache.execute(
            config, jobs=1, root=checkout, capped=[book / "b.ipynb"], capped_results=capped_tables
        )
    finally:
        os.environ.pop("DEEPMR_RESULTS") if saved is None else os.environ.update(DEEPMR_RESULTS=saved)
    assert failed == []  # b passes with the machine's own kernels
    assert len(failed_capped) == 1 and "flips" in failed_capped[0] and "AVX2-capped" in failed_capped[0]
    assert (capped_tables / "b.txt").read_text() == "AVX2"  # the cap and the capped run's own table folder
    assert (checkout / "native" / "b.txt").read_text() == "native"
    assert (checkout / "native" / "a.txt").read_text() == "native"  # after it, the worker's environment restored
    out = capsys.readouterr().out
    assert (
        out.index("book/b.ipynb: executed")
        < out.index("book/b.ipynb (AVX2-capped kernels): failed")
        < out.index("book/a.ipynb: executed")
    )
    cache = get_cache(yaml.safe_load(config.read_text())["execute"]["cache"])
    assert len(cache.list_cache_records()) == 2  # the chapters' runs, not the capped one
    with pytest.raises(ValueError, match="not a notebook file"):
        book_cache.execute(config, root=checkout, capped=[book / "missing.ipynb"], capped_results=capped_tables)
    with pytest.raises(ValueError, match="capped_results"):
        book_cache.execute(config, root=checkout, capped=[book / "a.ipynb"])


def test_the_pool_starts_the_longest_chapters_first_and_an_unlisted_one_before_them(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    for name in ("00_method", "01_simulation", "02_bpnet", "03_deepsea", "04_challenges", "05_new"):
        _chapter(book / f"{name}.ipynb", "1")
    toc = {"root": "index", "chapters": [{"file": f"book/{p.stem}"} for p in sorted(book.glob("*.ipynb"))]}
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(toc))
    order = [p.stem for p in book_cache.pool_order(tmp_path)]
    assert order == ["05_new", "04_challenges", "03_deepsea", "01_simulation", "02_bpnet", "00_method"]
    assert [p.stem for p in book_cache.pool_order()] == [n.split("/")[1] for n in book_cache.LONGEST_FIRST]
