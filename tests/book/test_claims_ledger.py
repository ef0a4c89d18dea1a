"""The claims ledger: what a chapter's Summary and folded solutions say about its results comes from the run.

A sentence there that carries a number or a comparative word ("smaller", "covers", "recovers", ...) must
either glue its value from the run (``{glue:...}``), name a claim the chapter checks
(``<!-- claim: TEXT -->``, with TEXT a claim of one of its ``claims.check`` cells, which also writes it to
``results/<chapter>/claims.csv``) or cite the literature it reports (``{cite:...}``). A solution that cannot
run in the chapter says what to compare and why, not what the reader will find.
"""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.ipynb") if re.match(r"\d\d_", p.name))

COMPARATIVE = re.compile(
    r"\b(less|more|fewer|larger|largest|smaller|smallest|higher|highest|lower|lowest|better|worse|best|worst|"
    r"exceeds?|shrinks?|shrank|grows?|grew|falls?|fell|rises?|rose|covers?|covered|recovers?|recovered|biased|"
    r"unbiased|barely|clearly|than|outperforms?|fails?|failed|wider|narrower|closer|closest|increases?|"
    r"decreases?|removes?|removed|fixes|survives|underestimates?|overestimates?|attenuated)\b",
    re.IGNORECASE,
)
NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:[.,]\d+)?(?:\s*%)?")
# what a number may sit in without being a result: code, maths, glued values, citations, cross-references
NOT_PROSE = [
    r"\{glue:[a-z]+\}`[^`]*`",
    r"\{(?:cite|numref|doc|ref|term):?[a-z]*\}`[^`]*`",
    r"`[^`]*`",
    r"\$\$.*?\$\$",
    r"\$[^$]*\$",
    r"\[[^\]]*\]\([^)]*\)",
    r"\b(?:[Ss]ection|[Cc]hapter|[Ee]xercise)s? \d+(?:\s*(?:and|to|-)\s*\d+)?",
]
CLAIM_MARK = re.compile(r"<!--\s*claim:\s*(.*?)\s*-->")


def _sections(markdown: str) -> list[str]:
    """The Summary (to the next heading) and the text of a folded Solutions block."""
    out = []
    if "## Summary" in markdown:
        out.append(markdown.split("## Summary", 1)[1].split("\n## ", 1)[0])
    if "```{dropdown}" in markdown:
        block = markdown.split("```{dropdown}", 1)[1].split("\n```", 1)[0]
        out.append(block.split("\n", 1)[1] if "\n" in block else "")
    return out


def _sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(?:^|(?<=\s))(?:\d+\.|\*|-) (?=\S)", "", text)  # list markers
    text = re.sub(r"\b(e\.g|i\.e|cf|vs)\.", r"\1", text)
    # a sentence ends at . ! ? before a space, keeping a claim mark that follows it
    return [s.strip() for s in re.findall(r".*?[.!?](?:\s*<!--.*?-->)*(?=\s|$)|.+$", text) if s.strip()]


def typed_claims(markdown: str) -> list[tuple[str, list[str]]]:
    """Sentences of the Summary and Solutions that state a number or comparison with no glue, claim or citation."""
    found = []
    for section in _sections(markdown):
        for sentence in _sentences(section):
            if "{glue:" in sentence or CLAIM_MARK.search(sentence) or "{cite:" in sentence:
                continue
            prose = sentence
            for pattern in NOT_PROSE:
                prose = re.sub(pattern, " ", prose)
            hits = COMPARATIVE.findall(prose) + [n.strip() for n in NUMBER.findall(prose)]
            if hits:
                found.append((sentence, hits))
    return found


def _markdown(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def _code(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def test_the_scan_can_fail():
    typed = "## Summary\n\n* IVW covers the truth in 93 % of rounds.\n* The bias is smaller than Egger's.\n"
    assert [h for _, h in typed_claims(typed)] == [["covers", "93 %"], ["smaller", "than"]]
    glued = "## Summary\n\n* IVW covers μ in {glue:text}`cov:.0%` of rounds (`threshold=3`, section 5).\n"
    assert typed_claims(glued) == []
    solution = "## Exercises\n\n1. Do it.\n\n```{dropdown} Solutions\n1. The SE shrinks.\n2. Run it.\n```\n"
    assert [s for s, _ in typed_claims(solution)] == ["The SE shrinks."]
    marked = solution.replace("shrinks.", "shrinks. <!-- claim: x -->")
    assert typed_claims(marked) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_summary_and_solutions_state_no_typed_result(path):
    typed = [f"{s!r} ({', '.join(h)})" for md in _markdown(path) for s, h in typed_claims(md)]
    assert not typed, (
        f"{path.name}: sentences that state a result nothing glues or checks; glue the value, add "
        "'<!-- claim: TEXT -->' naming a claims.check claim, or say what to compare instead:\n  " + "\n  ".join(typed)
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_claim_marks_name_claims_the_chapter_checks(path):
    code = _code(path)
    named = [m for md in _markdown(path) for m in CLAIM_MARK.findall(md)]
    missing = [m for m in named if f'"{m}"' not in code and f"'{m}'" not in code]
    assert not missing, f"{path.name}: claim marks {missing} name no claim of the chapter's claims.check cells"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_claim_cell_writes_the_ledger(path):
    # every check lands in results/<chapter>/claims.csv, the ledger the at-a-glance page shows
    code = _code(path)
    calls = re.findall(r"claims\.check\((.*?)\)\s*;?\s*$", code, flags=re.M | re.S)
    assert calls, f"{path.name}: no claims.check cell"
    assert all('ledger=RESULTS / "claims.csv"' in c for c in calls), f"{path.name}: a claims.check without the ledger"
