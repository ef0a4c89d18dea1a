import os
from pathlib import Path


def pytest_terminal_summary(terminalreporter):
    """Print the per-page report (math elements, figures, screenshot) the browser check wrote."""
    report = Path(os.environ.get("DEEPMR_SCREENSHOTS", "_build/screenshots")) / "report.csv"
    if report.is_file():
        terminalreporter.section("pages as the browser showed them")
        for line in report.read_text().splitlines():
            terminalreporter.write_line("  " + line.replace(",", "  "))
