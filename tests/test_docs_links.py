"""Every relative link in the README and docs/ reaches a file of the repository and, where it
names a section, a heading of that file: a renamed heading or moved file breaks no reader's
path silently."""
import glob
import os
import re

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DOCUMENTS = ["README.md", "CHANGELOG.md", *sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```", re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str):
    with open(path) as f:
        text = CODE.sub("", f.read())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def links(document: str):
    with open(os.path.join(ROOT, document)) as f:
        text = CODE.sub("", f.read())
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target):  # http(s):, mailto: and the like are not ours
            yield target


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_reach_a_file_and_a_heading(document):
    broken = []
    for target in links(document):
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(ROOT, os.path.dirname(document), path)) if path \
            else os.path.join(ROOT, document)
        if not os.path.exists(file):
            broken.append(f"{target}: no such file")
        elif anchor and file.endswith(".md") and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {os.path.relpath(file, ROOT)}")
    assert not broken, f"{document}: " + "; ".join(broken)


def test_slug_follows_github():
    assert slug("Variants: the parts of `e3va_spatial` and E3VA's lossy memory options") == (
        "variants-the-parts-of-e3va_spatial-and-e3vas-lossy-memory-options")
    assert slug("The first comparison (first trunk, 300 iterations)") == (
        "the-first-comparison-first-trunk-300-iterations")
