"""The docs stay true: generated tables match the committed results, links resolve,
and the README stays short. Only JSON reading; no training."""

import difflib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200


def _load_docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "benchmarks" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_tables = _load_docs_tables()
PAGES = docs_tables.docs_pages(ROOT)
MARKDOWN = [ROOT / "README.md", *PAGES]


@pytest.fixture(scope="module")
def blocks():
    return docs_tables.render_all(ROOT)


def test_docs_pages_exist():
    assert PAGES, "docs/*.md is empty"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_generated_blocks_are_up_to_date(page, blocks):
    text = page.read_text(encoding="utf-8")
    regenerated = docs_tables.update(text, blocks)
    if regenerated != text:
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True), regenerated.splitlines(keepends=True), "committed", "regenerated"
            )
        )
        pytest.fail(f"{page.relative_to(ROOT)} is stale; run `python benchmarks/docs_tables.py --write`:\n{diff}")


def test_every_block_appears_in_the_docs(blocks):
    used = {name for page in PAGES for name in docs_tables.block_names(page.read_text(encoding="utf-8"))}
    assert set(blocks) <= used, f"blocks rendered but in no docs page: {sorted(set(blocks) - used)}"


def test_update_rejects_unknown_and_unterminated_blocks():
    start = "<!-- generated: {} (python benchmarks/docs_tables.py) -->\n"
    with pytest.raises(ValueError, match="unknown"):
        docs_tables.update(start.format("nope") + "x\n<!-- end generated: nope -->\n", {"planner": "y"})
    with pytest.raises(ValueError, match="unterminated"):
        docs_tables.update(start.format("planner") + "x\n", {"planner": "y"})


def test_update_replaces_only_the_block_body():
    text = "before\n<!-- generated: a (python benchmarks/docs_tables.py) -->\nold\n<!-- end generated: a -->\nafter\n"
    assert docs_tables.update(text, {"a": "\nnew\n\n"}) == text.replace("\nold\n", "\n\nnew\n\n")


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it at {README_MAX_LINES} or fewer"


_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8")))}


def _links(page: Path) -> list[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return [a or b for a, b in _LINK.findall(text)]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"broken links in {page.relative_to(ROOT)}: {broken}"
