"""Execute one chapter outside the book build (e.g. at another scale) and save the executed copy.

DEEPMR_SCALE=paper python tools/run_notebook.py book/01_simulation.ipynb /tmp/01_paper.ipynb
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    nb = nbformat.read(src, as_version=4)
    t = time.time()
    try:
        NotebookClient(
            nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}
        ).execute()
    except Exception:
        # a long run that fails late keeps what it computed: the cells executed so far, with their outputs
        nbformat.write(nb, dst)
        print(f"{src} failed after {time.time() - t:.0f} s; the cells run so far are in {dst}", file=sys.stderr)
        raise
    nbformat.write(nb, dst)
    print(f"executed {src} in {time.time() - t:.0f} s -> {dst}")
