"""The project's own words: the README stays a newcomer's page whose set-up commands are the ones
CI runs, every docs page is reachable from it, and every relative link and anchor in the README,
docs/, RELIABILITY.md and BENCHMARKS.md resolves."""

import re
from collections import Counter
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = [README, REPO / "RELIABILITY.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
MD = MarkdownIt("commonmark").enable("table")


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def anchors(page: Path) -> set[str]:
    tokens = MD.parse(page.read_text())
    seen, out = Counter(), set()
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type == "heading_open":
            s = slug("".join(c.content for c in inline.children if c.type in ("text", "code_inline")))
            out.add(s if not seen[s] else f"{s}-{seen[s]}")
            seen[s] += 1
    return out


def links(page: Path) -> list[str]:
    out = []
    for tok in MD.parse(page.read_text()):
        for child in tok.children or []:
            if child.type == "link_open":
                out.append(child.attrs["href"])
            elif child.type == "image":
                out.append(child.attrs["src"])
    return out


def fenced(page: Path, lang: str = "bash") -> list[str]:
    return [t.content.strip() for t in MD.parse(page.read_text()) if t.type == "fence" and t.info == lang]


def broken(page: Path) -> list[str]:
    """Each relative link or image of `page` whose file, or whose heading anchor, does not exist."""
    bad = []
    for href in links(page):
        if re.match(r"[a-z]+:", href):  # http(s), mailto: not checked here (no network)
            continue
        path, _, anchor = unquote(href).partition("#")  # markdown-it percent-encodes hrefs
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(f"{href}: no file {target.name}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            bad.append(f"{href}: no heading #{anchor} in {target.name}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    assert not broken(page), f"{page.relative_to(REPO)}:\n" + "\n".join(broken(page))


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "c.md").write_text("# C\n")
    (tmp_path / "a.md").write_text(
        "# Top `x.py` (y)\n\n## Top `x.py` (y)\n\n```bash\n# not a heading\n```\n\n"
        "[ok](#top-xpy-y-1) [ok](c.md#c) ![ok](c.md) `[code](b.md)`\n\n| a |\n|---|\n| [gone](b.md) |\n\n"
        "[bad](#nope) [bad](c.md#top-xpy-y)\n"
    )
    assert anchors(tmp_path / "a.md") == {"top-xpy-y", "top-xpy-y-1"}
    assert broken(tmp_path / "a.md") == [
        "b.md: no file b.md",
        "#nope: no heading #nope in a.md",
        "c.md#top-xpy-y: no heading #top-xpy-y in c.md",
    ]


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = [
        line
        for line in (REPO / ".ci/run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert len(ci) == 1, ci
    blocks = fenced(README)
    assert ci[0] in blocks, "the README's test command differs from .ci/run's"


def test_the_readme_has_the_two_set_up_commands_and_stays_short():
    blocks = fenced(README)
    assert blocks[:2] == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install 'torch==2.13.0' -e . "
        "--config-settings editable_mode=compat && snakemake --profile profiles/local all_tables",
        "bash tests/system_packages.sh && python3 -m venv .venv && . .venv/bin/activate && pip install -q "
        "'torch==2.13.0' -e '.[test]' --config-settings editable_mode=compat && python -m pytest -q --durations=15",
    ]
    assert len(README.read_text().splitlines()) < 200


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / h.partition("#")[0]).resolve() for h in links(README) if not re.match(r"[a-z]+:", h)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"not linked from README.md: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_cites_design_notes_or_issue_numbers(page):
    text = page.read_text()
    hits = re.findall(r"DESIGN\.md|\.\./shared|\bissues?\s*#?\d+|(?<![\w/&])#\d+\b", text, flags=re.I)
    assert not hits, f"{page.relative_to(REPO)}: {hits}"
