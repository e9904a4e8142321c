"""The documentation says what the code does: the generated CLI reference is current, every
command has help and is in it, links resolve, the README stays a front door, and the shell
commands it shows exist with the options they use."""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from speakerdb.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def _docs_cli():
    """tools/docs_cli.py, the generator of docs/cli.md (a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("docs_cli", ROOT / "tools" / "docs_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


# --- the generated CLI reference ----------------------------------------------------------------


def test_cli_reference_is_generated_from_the_current_help():
    generator = _docs_cli()
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    # Compared word by word: another click release may wrap a line differently, which is not
    # a change of the documentation (`python tools/docs_cli.py --check` compares exactly).
    assert current.split() == generator.render().split(), (
        f"docs/cli.md is out of date: run `{generator.COMMAND}` and commit docs/cli.md"
    )


def _sections(page: str) -> dict[str, str]:
    """``## heading`` -> the text under it, of a markdown page."""
    parts = re.split(r"^## (.+)$", page, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_command_has_help_and_is_documented():
    sections = _sections((DOCS / "cli.md").read_text(encoding="utf-8"))
    found = list(_docs_cli().walk(cli))
    assert len(found) > 20
    for path, command, _ in found:
        title = " ".join(("speakerdb", *path))
        assert (command.help or "").strip(), f"{title} has no help text"
        assert title in sections, f"{title} is not in docs/cli.md: run python tools/docs_cli.py"
        shown = " ".join(sections[title].split())
        assert " ".join(command.help.split()[:6]) in shown, title
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.opts[0] in shown, (title, param.opts)


# --- links ----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _outside_code(text: str, inline: bool = False) -> Iterator[str]:
    """The lines of a markdown page outside fenced code blocks; inline code is removed
    unless ``inline`` (headings keep it: it is part of their anchor)."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield line if inline else re.sub(r"`[^`]*`", "", line)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _outside_code(page.read_text(encoding="utf-8"), inline=True):
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match is None:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(page: Path, text: str) -> list[str]:
    broken = []
    for line in _outside_code(text):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        broken += _broken_links(page, page.read_text(encoding="utf-8"))
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_missing_files_and_headings():
    text = "[a](docs/cli.md) [b](docs/nowhere.md) [c](docs/cli.md#speakerdb-nothing) `[d](x.md)`"
    assert _broken_links(README, text) == [
        "README.md: docs/nowhere.md (no such file)",
        "README.md: docs/cli.md#speakerdb-nothing (no such heading)",
    ]


# --- the README -----------------------------------------------------------------------------------


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines: move reference to docs/ (limit {README_MAX_LINES})"
    )
    for page in ("docs/cli.md", "docs/decisions.md", "docs/contributing.md"):
        assert f"({page}" in "\n".join(lines), f"README.md does not link {page}"


def _shell_commands(text: str) -> Iterator[list[str]]:
    """The ``speakerdb ...`` invocations in a page's sh/bash/console code blocks, as argument
    lists. Continuation lines are joined, comments dropped; in console blocks only ``$`` lines
    are commands (the others are output). ``VAR=... speakerdb`` and ``$(speakerdb ...)``
    count; a pipe, ``;`` or ``)`` ends an invocation."""
    language = None
    pending = ""
    for raw in text.splitlines():
        fence = _FENCE.match(raw.strip())
        if fence:
            language = raw.strip()[3:].strip() if language is None else None
            continue
        if language not in ("sh", "bash", "shell", "console"):
            continue
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for start, token in enumerate(tokens):
            if token.rsplit("$", 1)[-1] != "speakerdb" and token != "speakerdb":
                continue
            args = []
            for arg in tokens[start + 1 :]:
                if arg and set(arg) <= set("|;&()<>"):
                    break
                args.append(arg)
            yield args


def _unknown_in(args: list[str]) -> str | None:
    """What in ``speakerdb ARGS`` names no command or option, or None."""
    command: click.Command = cli
    path = ["speakerdb"]
    context = click.Context(cli, info_name="speakerdb", **cli.context_settings)
    positional = False
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("-") and arg != "-":
            name = arg.split("=", 1)[0]
            options = {
                opt: param
                for param in command.get_params(context)
                for opt in (*param.opts, *param.secondary_opts)
            }
            if name not in options:
                return f"{' '.join(path)}: no option {name}"
            param = options[name]
            takes_value = not (isinstance(param, click.Option) and (param.is_flag or param.count))
            if takes_value and "=" not in arg:
                index += param.nargs if param.nargs > 0 else 1
        elif isinstance(command, click.Group) and not positional:
            if arg not in command.commands:
                return f"{' '.join(path)}: no command {arg}"
            command = command.commands[arg]
            path.append(arg)
            context = click.Context(command, info_name=arg, parent=context)
        else:
            positional = True
        index += 1
    return None


def test_shell_commands_in_the_documentation_exist():
    """Every ``speakerdb ...`` in a shell block of README.md or docs/ names a real command
    path and real options of it (the generated docs/cli.md holds only --help output)."""
    wrong = []
    count = 0
    for page in _pages():
        for args in _shell_commands(page.read_text(encoding="utf-8")):
            count += 1
            problem = _unknown_in(args)
            if problem is not None:
                wrong.append(f"{page.name}: speakerdb {' '.join(args)} -> {problem}")
    assert count > 10
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("speakerdb enroll alice a.wav --mode overwrite --force", None),
        ("KEY=$(speakerdb keys create fd --scope verify)", None),
        ("speakerdb db upgrade --db x.sqlite | tail -1", None),
        ("speakerdb db migrate", "speakerdb db: no command migrate"),
        ("speakerdb verify alice a.wav --treshold 3", "speakerdb verify: no option --treshold"),
        (
            "speakerdb enroll alice \\\n  a.wav --overwrite",
            "speakerdb enroll: no option --overwrite",
        ),
    ],
)
def test_the_command_check_sees_unknown_commands_and_options(block, problem):
    found = list(_shell_commands(f"```sh\n{block}\n```\n"))
    assert len(found) == 1
    assert _unknown_in(found[0]) == problem
