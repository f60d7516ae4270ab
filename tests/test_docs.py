"""The README and docs/ stay true to the repository: every relative link resolves (the file,
and for `#anchor` a heading with that GitHub slug), and every `python -m MODULE` command the
README and docs/usage.md show runs as written: `python -m MODULE --help` exits 0 in a fresh
interpreter and lists every `--option` the docs give it.

The --help runs take the `__main__` path a reader takes (tests/test_cli_help.py calls each
`main` in-process instead), each distinct module once, in one fresh interpreter: importing
torch, Ray and MLflow is most of this file's time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The pages whose commands are checked: the README and the options page it links to.
COMMAND_PAGES = [REPO / "README.md", REPO / "docs" / "usage.md"]

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
COMMAND = re.compile(r"(?:^|[\s;(&|])(?:\S*/)?python[0-9.]*\s+-m\s+([A-Za-z_][\w.]*)(.*)")
OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def doc_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def split_fences(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, fenced code lines) of a Markdown text; a fence's own lines are in neither."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            code.append(line)
        else:
            prose.append(line)
    return prose, code


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lower-cased, punctuation other than
    '-' and '_' dropped, each space a '-' (so "A search: `--grid optuna`" -> a-search---grid-optuna)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML renders as nothing
    text = text.replace("*", "")  # emphasis markers
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's slug on `page`, repeated slugs numbered -1, -2, ... as GitHub does."""
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    slugs = set()
    for line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def relative_links(page: Path) -> list[str]:
    """Targets of the page's Markdown links and images that are not URLs (code excluded)."""
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    targets = []
    for line in prose:
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                targets.append(target)
    return targets


def broken_links(page: Path) -> list[str]:
    """'target: why' for each relative link on `page` that does not resolve."""
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with slug '{anchor}' in {dest.name}")
    return broken


def commands(page: Path) -> list[tuple[str, str]]:
    """(module, the rest of its command line) for each `python -m MODULE ...` the page shows,
    in fenced code (continuation lines joined, comments cut) and in inline code spans."""
    prose, code = split_fences(page.read_text(encoding="utf-8"))
    lines = []
    for line in "\n".join(code).replace("\\\n", " ").splitlines():
        lines.append(re.split(r"\s#", line, maxsplit=1)[0])
    for line in prose:
        lines.extend(m.group(2) for m in CODE_SPAN.finditer(line))
    found = []
    for line in lines:
        match = COMMAND.search(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


# Run in a fresh interpreter: each module exactly as `python -m MODULE --help` runs it (runpy,
# run_name "__main__"), one after another, so torch, Ray and MLflow are imported once, not once
# per module (on a loaded 2-core machine that is the difference between ~15 s and a minute).
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
for module in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException as error:  # report it as that module's failure, go on with the rest
        code, out = 1, io.StringIO(f"{type(error).__name__}: {error}")
    print(json.dumps({"module": module, "rc": code, "out": out.getvalue()}), flush=True)
"""


def run_helps(modules: list[str]) -> dict[str, tuple[int, str]]:
    """module -> (exit status, what `python -m module --help` printed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, *modules], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith('{"module"'):
            record = json.loads(line)
            results[record["module"]] = (record["rc"], record["out"])
    for module in modules:  # the runner itself died: say so for what it did not reach
        results.setdefault(module, (done.returncode or 1, done.stderr.strip()[-300:]))
    return results


# --------------------------------------------------------------------------- the checker itself

def test_slugs_follow_github():
    assert github_slug("A search: `--grid optuna`") == "a-search---grid-optuna"
    assert github_slug("Budgets: `quick`, `cpu`, `paper`") == "budgets-quick-cpu-paper"
    assert github_slug("Why `combined_net` plateaus at 64 px") == "why-combined_net-plateaus-at-64-px"
    assert github_slug("Sizing the fusion grid's `quick` budget") == "sizing-the-fusion-grids-quick-budget"


def test_checker_finds_broken_links_and_commands(tmp_path):
    (tmp_path / "other.md").write_text("# Usage\n\n## Usage\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](other.md#usage-1) [ok](#title) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#usage-2) ![img](img/none.png)\n"
        "```bash\n# [not a link](nowhere.md)\npython -m pkg.mod --flag \\\n    --more 1  # --not-this\n```\n"
        "Inline `.venv/bin/python -m other.mod --x` too.\n",
        encoding="utf-8")
    broken = broken_links(page)
    assert [b.split(":")[0] for b in broken] == ["missing.md", "other.md#usage-2", "img/none.png"]
    assert [(m, OPTION.findall(rest)) for m, rest in commands(page)] == [
        ("pkg.mod", ["--flag", "--more"]), ("other.mod", ["--x"])]


# --------------------------------------------------------------------------- the docs

@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    assert broken_links(page) == []


@pytest.fixture(scope="module")
def documented_commands() -> dict[str, set[str]]:
    """module -> every --option the command pages give it."""
    options: dict[str, set[str]] = {}
    for page in COMMAND_PAGES:
        for module, rest in commands(page):
            options.setdefault(module, set()).update(OPTION.findall(rest))
    return options


def test_readme_shows_the_two_commands(documented_commands):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "bash .ci/run" in readme and ".venv/bin/python -m search.run --grid ablation" in readme
    assert {"search.run", "pytest"} <= set(documented_commands)


def test_every_documented_command_accepts_help_and_its_options(documented_commands):
    modules = sorted(documented_commands)
    helps = run_helps(modules)
    failures = []
    for module in modules:
        rc, out = helps[module]
        if rc != 0 or "usage" not in out.lower():
            failures.append(f"python -m {module} --help: exit {rc}: {out.strip()[-300:]}")
            continue
        unknown = sorted(opt for opt in documented_commands[module] if opt not in out)
        if unknown:
            failures.append(f"python -m {module}: the docs give {unknown}, its --help lists none of them")
    assert failures == []
