"""The book: the README and the executed notebooks as a static website, built by Sphinx with
MyST-NB from ``book/conf.py`` and ``book/_toc.yml`` (the notebooks' stored outputs, never
re-executed), then checked:

    python -m tvmlib.apps.book [--out _build/book]      # make book

Sphinx runs with ``-W -n``: any warning (a broken cross-reference, a missing image, a bad
notebook) fails the build. ``check_site`` then reads every page of the result and fails on an
internal link or anchor that leads nowhere, and on any page or style sheet that loads a resource
from the network, so the site opens from the build folder with no network
(``<out>/index.html``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tvmlib.apps import cli

# The attributes through which a page links or loads something, and whether it is loaded with
# the page (a remote one would need the network) or only followed when clicked.
LINK_ATTRS = {("a", "href"): False, ("img", "src"): True, ("script", "src"): True,
              ("link", "href"): True, ("iframe", "src"): True, ("source", "src"): True,
              ("video", "src"): True, ("audio", "src"): True}
REMOTE_CSS = re.compile(r"""url\(\s*['"]?(?:https?:)?//""")
SKIP_SCHEMES = ("mailto", "data", "javascript", "tel")


class _Page(HTMLParser):
    """The links (tag, url) and the element ids / anchor names of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, bool]] = []  # (tag, url, loaded with the page)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        for (t, attr), loaded in LINK_ATTRS.items():
            if tag == t and a.get(attr):
                # <link rel="canonical|alternate"> is metadata, not something loaded
                rel = (a.get("rel") or "").split()
                self.links.append((tag, a[attr], loaded and not (
                    tag == "link" and not {"stylesheet", "icon", "preload"} & set(rel))))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def check_site(out: Path) -> list[str]:
    """Problems of the built site under ``out``: internal links or anchors that lead nowhere,
    resources loaded from the network (pages and style sheets). Empty when all is well."""
    out = Path(out).resolve()
    pages = {p.resolve(): _parse(p) for p in sorted(out.rglob("*.html"))
             if not {"_static", ".doctrees"} & set(p.relative_to(out).parts)}  # theme macros
    problems: list[str] = []
    if not pages:
        return [f"{out}: no HTML pages"]
    for path, page in pages.items():
        where = path.relative_to(out)
        for tag, url, loaded in page.links:
            parts = urlsplit(url)
            if parts.scheme in SKIP_SCHEMES:
                continue
            if parts.scheme or parts.netloc:  # http(s)://... or //host/...
                if loaded:
                    problems.append(f"{where}: <{tag}> loads {url} from the network")
                continue
            target = path if not parts.path else (
                (out / parts.path.lstrip("/")) if parts.path.startswith("/")
                else path.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or out not in (target, *target.parents):
                problems.append(f"{where}: <{tag}> {url} leads to a missing file")
            elif parts.fragment and target.suffix == ".html" and \
                    unquote(parts.fragment) not in pages[target].ids:
                problems.append(f"{where}: <{tag}> {url}: no element with id "
                                f"'{unquote(parts.fragment)}' in {target.relative_to(out)}")
    for css in sorted(out.rglob("*.css")):
        if REMOTE_CSS.search(css.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{css.relative_to(out)}: a url() loads from the network")
    return problems


def build(out: Path, quiet: bool = True) -> int:
    """Sphinx's HTML build of the book into ``out`` (-W -n: warnings are errors), in a process
    of its own. Returns Sphinx's exit code."""
    from tvmlib.utils.paths import repo_root

    root = repo_root()
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n",
           "-c", str(root / "book"), "-d", str(Path(out) / ".doctrees"), str(root), str(out)]
    return subprocess.run(cmd + (["-q"] if quiet else []), cwd=root).returncode


def main(argv: Iterable[str] | None = None) -> int:
    parser = cli.Parser(
        prog="python -m tvmlib.apps.book",
        description="Build the book (README + executed notebooks) with Sphinx/MyST-NB and check "
                    "its internal links and that it needs no network.")
    parser.add_argument("--out", type=Path, default=Path("_build/book"),
                        help="build folder (default: _build/book); open <out>/index.html")
    parser.add_argument("--verbose", action="store_true", help="Sphinx's progress output")
    args = parser.parse_args(list(argv) if argv is not None else None)
    code = build(args.out, quiet=not args.verbose)
    if code:
        print(f"error: the Sphinx build failed (exit {code}); its warnings are above",
              file=sys.stderr)
        return code
    problems = check_site(args.out)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"book: {(args.out / 'index.html').resolve().as_uri()} "
          f"({sum(1 for _ in args.out.rglob('*.html'))} pages; links checked, no network needed)")
    return 0


if __name__ == "__main__":
    cli.run(main)
