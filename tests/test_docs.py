"""The README and docs/ pages: every relative link resolves (the file exists; an #anchor names a heading of the
target, by GitHub's slug rules), and every `distface ...` command line of their bash and console blocks names a
real subcommand whose `--help` lists each option the line uses. The README stays a guide: at most 250 lines.

Each subcommand's --help runs once, in a process of its own, as a user would run it; the CLI parses its arguments
before it imports TensorFlow, so the whole file takes a few seconds.
"""
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = ["training", "scaling", "data", "evaluation", "deployment", "reliability", "benchmarks", "design", "gpu"]
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code, where links and headings live."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    """Every anchor of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(title)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return frozenset(found)


def links(doc: Path) -> list[str]:
    targets = LINK.findall(prose(doc.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto: are not ours


def command_lines(doc: Path) -> list[str]:
    """The `distface ...` lines of a page's ```bash / ```console blocks (console: the `$ ` lines only), continued
    lines joined, leading VAR=value assignments and comments dropped."""
    lines = []
    for lang, body in FENCE.findall(doc.read_text()):
        lang = lang.strip()
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        body = re.sub(r"\\\n\s*", " ", body)
        for line in body.splitlines():
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]
            if words and words[0] == "distface":
                lines.append(shlex.join(words))
    return lines


@lru_cache(maxsize=None)
def help_text(*command: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "distface", *command, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"distface {' '.join(command)} --help failed:\n{proc.stderr}"
    return proc.stdout


def subcommands() -> list[str]:
    """The commands `distface --help` lists."""
    listing = help_text().split("commands:", 1)[1]
    return re.findall(r"^  (\S+)\s{2,}", listing, re.M)


def options(words: list[str]) -> list[str]:
    """The options a command line uses, `--name=value` as `--name`."""
    return [w.split("=", 1)[0] for w in words if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)]


def uses(command: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """(the help to check against, its options) for one `distface ...` line: `launch ... -- ARGS` gives ARGS to
    `train`; a subcommand with sub-subcommands (checkpoint merge) checks the inner one."""
    words = shlex.split(command)[1:]
    name, rest = words[0], words[1:]
    if name == "launch" and "--" in rest:
        split = rest.index("--")
        return [(("launch",), options(rest[:split])), (("train",), options(rest[split + 1:]))]
    inner = re.search(r"^usage: distface \S+ .*?\{([\w,]+)\}", help_text(name), re.S)
    if inner and rest and rest[0] in inner[1].split(","):
        return [((name, rest[0]), options(rest[1:]))]
    return [((name,), options(rest))]


COMMANDS = sorted({(doc.relative_to(ROOT).as_posix(), line) for doc in DOCS for line in command_lines(doc)})


def test_readme_is_a_short_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the guide's limit is 250 (move detail to docs/)"
    assert not re.search(r"\bissue \d+", README.read_text(), re.I), "the README says what is true, not its history"


def test_the_pages_exist_and_link_to_each_other():
    readme_links = set(links(README))
    for page in PAGES:
        path = ROOT / "docs" / f"{page}.md"
        assert path.is_file(), f"docs/{page}.md is missing"
        assert f"docs/{page}.md" in readme_links, f"README.md does not link to docs/{page}.md"
        assert any(t.split("#")[0] == "../README.md" for t in links(path)), f"docs/{page}.md does not link back"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc):
    found = links(doc)
    assert found, f"{doc.name} has no links"
    for target in found:
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name}: link to {target}: no such file {path}"
        if anchor:
            assert path.suffix == ".md", f"{doc.name}: link to {target}: an anchor in a file that is not a page"
            assert anchor in anchors(path), (f"{doc.name}: link to {target}: no such heading in {path.name} "
                                             f"(anchors: {', '.join(sorted(anchors(path)))})")


def test_slug_follows_github():
    assert slug("Sharded identity head (`benchmarks/sharded_head.py`)") == \
        "sharded-identity-head-benchmarkssharded_headpy"
    assert slug("What distface does that the others do not") == "what-distface-does-that-the-others-do-not"
    assert slug("7 December 2026, late evening: the decay") == "7-december-2026-late-evening-the-decay"
    assert slug("Batch size and learning rate") == "batch-size-and-learning-rate"


@pytest.mark.slow  # starts a process per subcommand (each --help answers in well under a second)
def test_every_command_line_resolves():
    assert len(COMMANDS) >= 20, COMMANDS
    used = {shlex.split(line)[1] for _, line in COMMANDS}
    assert {"train", "launch", "eval", "export", "embed", "verify", "align", "pack"} <= used, used
    known = subcommands()
    assert "train" in known and "launch" in known, known
    checks = []
    for doc, line in COMMANDS:
        assert shlex.split(line)[1] in known, f"{doc}: `{line}`: no such command (distface --help: {known})"
        checks += [(doc, line, help_of, flags) for help_of, flags in uses(line)]
    with ThreadPoolExecutor(8) as pool:  # every distinct --help once, in parallel
        list(pool.map(lambda command: help_text(*command), {c for _, _, c, _ in checks}))
    for doc, line, help_of, flags in checks:
        text = help_text(*help_of)
        for flag in flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{doc}: `{line}`: `distface {' '.join(help_of)} --help` does not list {flag}")


@pytest.mark.slow  # runs `distface eval --help`
def test_the_command_check_catches_a_wrong_flag():
    """The check above is not vacuous: a flag the command does not have, or one given to train after launch's --,
    is found missing."""
    [(help_of, flags)] = uses("distface eval --checkpoint runs/x --no-such-flag")
    assert help_of == ("eval",) and "--no-such-flag" in flags
    assert not re.search(r"(?<![\w-])--no-such-flag(?![\w-])", help_text("eval"))
    (launch, before), (train, after) = uses("distface launch --np 2 -- --config c.yaml --set a.b=1")
    assert (launch, before, train, after) == (("launch",), ["--np"], ("train",), ["--config", "--set"])
