"""MkDocs hooks (mkdocs.yml): the README as the home page, the changelog as a
page, and links out of ``docs/`` checked, not left broken.

The Markdown files stay what GitHub shows: ``docs/index.md`` only points at the
README, and links such as ``../examples/plain_loop.py`` resolve in the
repository. On the site a link to a file outside ``docs/`` becomes the path in
code (``examples/plain_loop.py``); a path that does not exist is an error, so
``mkdocs build --strict`` fails on it as on any broken link.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.mombs")

ROOT = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _from_root(markdown: str) -> str:
    """README links are relative to the repository root; the home page's are relative to docs/."""

    def move(m: re.Match) -> str:
        link = m[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
            return m[0]
        return f"[{m[1]}]({link[len('docs/') :] if link.startswith('docs/') else '../' + link})"

    return _LINK.sub(move, markdown)


def _outside_links(markdown: str, page_dir: str, page: str) -> str:
    def fix(m: re.Match) -> str:
        text, link = m[1], m[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):
            return m[0]
        path = link.partition("#")[0]
        target = posixpath.normpath(posixpath.join("docs", page_dir, path))
        if target.startswith("docs/") and not target.endswith("/"):
            return m[0]  # a page of the site: MkDocs checks it
        if not (ROOT / target).exists():
            log.error("%s links to %s, which is not in the repository", page, target)
            return m[0]
        shown = target + ("/" if (ROOT / target).is_dir() else "")
        return (
            f"{text} (`{shown}`)" if text.strip("`") != shown.rstrip("/") and text.strip("`") != shown else f"`{shown}`"
        )

    parts, last = [], 0
    for fence in _FENCE.finditer(markdown):  # leave code blocks alone
        parts.append(_LINK.sub(fix, markdown[last : fence.start()]))
        parts.append(fence[0])
        last = fence.end()
    parts.append(_LINK.sub(fix, markdown[last:]))
    return "".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    src = page.file.src_uri
    if src == "index.md":
        markdown = _from_root((ROOT / "README.md").read_text(encoding="utf-8"))
    elif src == "changelog.md":
        markdown = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    return _outside_links(markdown, posixpath.dirname(src), src)
