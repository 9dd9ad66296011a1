"""The manual has no dead links: every relative link in README.md, CONTRIBUTING.md and docs/*.md names a file in the
repository, and its #anchor a heading of that file (GitHub's anchors); every docs/*.md named anywhere exists."""
import re
import subprocess

import pytest

from conftest import ROOT

MANUAL = ["README.md", "CONTRIBUTING.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target "title"); not images
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code (links inside code are examples, not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def anchors(path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation removed (hyphens and underscores
    kept), spaces to hyphens; repeated headings get -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchor_rule_matches_github(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Scaling out\n## train.py — full SFT (ZeRO-3)\n```\n# not a heading\n```\n## Scaling out\n")
    assert anchors(md) == {"scaling-out", "trainpy--full-sft-zero-3", "scaling-out-1"}


@pytest.mark.parametrize("doc", MANUAL)
def test_no_dead_relative_links(doc):
    path = ROOT / doc
    dead = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... (not checked: no network)
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or ROOT.resolve() not in (dest, *dest.parents):
            dead.append(f"{target} (no such file in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT.resolve())})")
    assert not dead, f"{doc}: {len(dead)} dead links: {dead}"


def test_every_docs_file_named_exists():
    """Every file of docs/ named in code, scripts or docs (a comment, a docstring, a help text) exists."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = set()
    for f in tracked:
        if f.endswith((".py", ".md", ".sh", ".txt", ".jinja", ".json")) or f in ("Makefile", ".ci/run"):
            text = (ROOT / f).read_text(errors="replace")
            missing |= {(f, name) for name in re.findall(r"\bdocs/[\w.-]+\.md\b", text) if not (ROOT / name).exists()}
    assert not missing, f"{len(missing)} references to docs that do not exist: {sorted(missing)}"
