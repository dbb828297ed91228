"""Provenance in the repository: papers are cited by key, implementation facts by a section of docs/implementation.md.

Three checks:

1. No hashed file name of the papers' text copies ("_" + 16 hex digits + ".txt") and no mention of the
   implementation-notes file that lives outside the repository ("IMPLEMENTATION_NOTES") in `workbench/` or
   `notebooks/` (the issue's acceptance grep).
2. Every citation key used in code and notebooks is a row of the table in `docs/papers.md`. Keys are collected from
   the STRING and COMMENT tokens (`tokenize`) of every `workbench/**/*.py` (string tokens without their prefix and
   quotes) and from the notebooks' markdown cells, with `KEY_PATTERN`. The rule: a key is a pair of square brackets
   around a name that
     - starts with a capital letter and has at least two characters, all letters, digits, "&", "+" or "-", the last
       a letter, digit or "+" ("[BDMAE]", "[T&R]", "[L-RED]", "[Grad-CAM++]", "[Cerou2012]");
     - is not directly preceded by a letter, digit, "_", a closing bracket or parenthesis, or a quote, so Python
       subscripts such as `x[N]`, `names[TARGET]`, `f(x)[Ab]` or `d["k"][Ab]` never count;
     - is followed by whitespace, the end of the text, or one of . , ; : ) ' (as in "[BDMAE] Alg. 2", "([L-RED])",
       "[T&R]'s"), so a markdown link "[Text](url)" or a reference "[Text][1]" never counts.
   The set of keys found must not be empty, and each must be in the table.
3. Every anchor written as "docs/implementation.md#anchor" in `workbench/`, the notebooks, README.md or `docs/` is
   the anchor of a heading of `docs/implementation.md` under GitHub's rules (lower case; every character other than a
   letter, digit, space, "-" or "_" dropped; spaces become "-").
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "docs" / "papers.md"
IMPLEMENTATION = ROOT / "docs" / "implementation.md"

FORBIDDEN = re.compile(r"_[0-9a-f]{16}\.txt|IMPLEMENTATION_NOTES")
KEY_PATTERN = re.compile(r"(?<![\w\])\['\"`])\[([A-Z][A-Za-z0-9&+\-]*[A-Za-z0-9+])\](?=$|[\s.,;:)'])")
TABLE_ROW = re.compile(r"^\|\s*\[([^\]]+)\]\s*\|")
ANCHOR_REF = re.compile(r"docs/implementation\.md#([A-Za-z0-9_\-]+)")
STRING_QUOTES = re.compile(r"^[A-Za-z]*('''|\"\"\"|'|\")(.*)\1$", re.DOTALL)


def _python_files() -> list[Path]:
    return sorted((ROOT / "workbench").rglob("*.py"))


def _notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def _python_texts(path: Path) -> list[str]:
    """The docstrings, comments and string literals of one module (string tokens without prefix and quotes)."""
    texts = []
    for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if token.type == tokenize.COMMENT:
            texts.append(token.string)
        elif token.type == tokenize.STRING:
            match = STRING_QUOTES.match(token.string)
            texts.append(match.group(2) if match else token.string)
    return texts


def _markdown_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]


def _cited_keys() -> dict[str, set[str]]:
    """key -> the files citing it."""
    found: dict[str, set[str]] = {}
    sources = [(p, _python_texts(p)) for p in _python_files()] + [(p, _markdown_cells(p)) for p in _notebooks()]
    for path, texts in sources:
        for text in texts:
            for key in KEY_PATTERN.findall(text):
                found.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    return found


def _table_keys() -> list[str]:
    return [m.group(1) for line in PAPERS.read_text(encoding="utf-8").splitlines() if (m := TABLE_ROW.match(line))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _heading_anchors() -> list[str]:
    lines = IMPLEMENTATION.read_text(encoding="utf-8").splitlines()
    return [github_anchor(m.group(1)) for line in lines if (m := re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line))]


def test_no_hashed_paper_files_or_outside_notes():
    """The issue's grep over every file under workbench/ and notebooks/ (caches aside)."""
    files = [p for folder in ("workbench", "notebooks") for p in sorted((ROOT / folder).rglob("*"))
             if p.is_file() and not {"__pycache__", ".ipynb_checkpoints"} & set(p.parts)]
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not offenders, "cite papers by key (docs/papers.md), facts by docs/implementation.md:\n" + "\n".join(
        offenders)


def test_key_pattern_rule():
    text = ('[BDMAE] Alg. 2; ([L-RED]) [T&R]\'s x[N] names[TARGET] d["k"][Ab] f(x)[Ab] [Link](url) [0, 1] [N] '
            "[DiffPure]. [Grad-CAM++], [Cerou2012]:")
    assert KEY_PATTERN.findall(text) == ["BDMAE", "L-RED", "T&R", "DiffPure", "Grad-CAM++", "Cerou2012"]


def test_every_cited_key_resolves_in_papers_md():
    table = _table_keys()
    assert table, f"no '| [KEY] | ... |' rows in {PAPERS}"
    duplicates = sorted({key for key in table if table.count(key) > 1})
    assert not duplicates, f"keys listed twice in docs/papers.md: {duplicates}"
    cited = _cited_keys()
    assert {"BDMAE", "REStore", "T&R", "L-RED"} <= set(cited), f"the four papers are not all cited: {sorted(cited)}"
    unknown = {key: sorted(files) for key, files in cited.items() if key not in table}
    assert not unknown, f"citation keys missing from docs/papers.md's table: {unknown}"


def test_implementation_anchors_exist():
    anchors = _heading_anchors()
    assert len(anchors) == len(set(anchors)), "docs/implementation.md has two headings with the same anchor"
    texts = [p.read_text(encoding="utf-8") for p in _python_files()]
    texts += [cell for p in _notebooks() for cell in _markdown_cells(p)]
    texts += [p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    referenced = {anchor for text in texts for anchor in ANCHOR_REF.findall(text)}
    assert referenced, "no docs/implementation.md#anchor reference found"
    missing = sorted(referenced - set(anchors))
    assert not missing, f"anchors referenced but not headings of docs/implementation.md: {missing}"
