"""Headless Chromium for the book: the one place that knows how to start it offline.

    python tools/browser.py pdf _build/pdf/_build/singlehtml/index.html _build/pdf/deepmr.pdf

``run(page, *flags)`` opens a local page the way a reader's browser would, with a fresh profile,
every host name resolving to nothing (the book must not need the network) and
``--virtual-time-budget`` so its scripts (MathJax) finish before Chromium dumps, screenshots or
prints. The browser check (``tests/pages``) and ``make pdf`` both use it. Chromium comes from the
Debian package ``chromium`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def executable() -> str | None:
    """Path of the Chromium binary, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run(page: Path, *flags: str, budget_ms: int = 8000, timeout: int = 300) -> subprocess.CompletedProcess:
    """One headless Chromium run on local file ``page`` with extra ``flags``; raises if it fails or hangs."""
    exe = executable()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
            "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", *flags, Path(page).resolve().as_uri(),
        ]  # fmt: skip
        # Chromium's stderr is noise (dbus, vulkan, the Debian wrapper script); a hang is an error
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def pdf_pages(path: Path) -> int:
    """Number of pages of a PDF Chromium wrote (its page objects are uncompressed)."""
    return len(re.findall(rb"/Type\s*/Page\b", Path(path).read_bytes()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Print a built single-page book to PDF with headless Chromium.")
    p.add_argument("--available", action="store_true", help="exit 0 if Chromium is installed, else 1")
    sub = p.add_subparsers(dest="cmd")
    pdf = sub.add_parser("pdf", help="print PAGE to OUT")
    pdf.add_argument("page", type=Path)
    pdf.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.available:
        return 0 if executable() else 1
    if args.cmd != "pdf":
        p.error("nothing to do: give --available or pdf PAGE OUT")
    if not args.page.is_file():
        print(f"error: {args.page} does not exist; build the single-page book first", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run(args.page, "--no-pdf-header-footer", f"--print-to-pdf={args.out.resolve()}", budget_ms=20000)
    if not args.out.is_file() or args.out.stat().st_size == 0:
        print(f"error: Chromium wrote no PDF to {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {pdf_pages(args.out)} pages, {args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
