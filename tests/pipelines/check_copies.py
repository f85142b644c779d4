"""Check that every ``# Copied from diffusers....`` block still matches the installed diffusers.

Like diffusers' ``utils/check_copies.py``, for blocks inside a method (our pipelines copy the
parts of diffusers' ``__call__`` they share with it, not whole methods). A block reads::

    # Copied from diffusers.<module>.<Class>.<method> [with old->new, old2->new2]
    ...code...
    # End of copy

and passes when its statements, in order, are statements of that method's source. Compared:

- statements as ``ast.unparse`` writes them (a compound statement by its header), so comments,
  line breaks, brackets and trailing commas, ruff's line length and diffusers', do not matter;
- after the ``with old->new`` replacements (literal, no spaces or commas) applied to diffusers'
  source, as diffusers' own check does;
- without the statements marked by a ``# Portrait: <why>`` comment on the line above them (the
  whole statement, a compound one with its body): these are the project's changes.

Statements of diffusers' method that the copy leaves out (a feature the pipeline does not
have, the deprecated ``callback``) are allowed; a changed statement is not, whether the copy or
diffusers changed it. Run ``python tests/pipelines/check_copies.py`` to check the pipelines.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

COPY = re.compile(r"^\s*# Copied from (diffusers\.[\w.]+)(?: with (\S.*?))?\s*(?:# noqa.*)?$")
END = re.compile(r"^\s*# End of copy\s*$")
CHANGE = re.compile(r"^\s*# Portrait:")
BODIES = ("body", "orelse", "finalbody", "handlers", "cases")
PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


@dataclass(frozen=True)
class CopiedBlock:
    """One ``# Copied from`` block of a file."""

    file: Path
    line: int  # 1-based line of the ``# Copied from`` comment
    source: str  # dotted path of the diffusers function
    replacements: tuple[tuple[str, str], ...]
    code: str  # the lines between the markers


def copied_blocks(file: Path) -> list[CopiedBlock]:
    """The ``# Copied from diffusers.`` blocks of ``file``; raise on a block without an end."""
    lines = file.read_text().splitlines()
    blocks = []
    for index, line in enumerate(lines):
        match = COPY.match(line)
        if match is None:
            continue
        end = next((j for j in range(index + 1, len(lines)) if END.match(lines[j])), None)
        if end is None or any(COPY.match(other) for other in lines[index + 1 : end]):
            raise ValueError(f"{file}:{index + 1}: `# Copied from` block without `# End of copy`")
        replacements = []
        for pair in (match.group(2) or "").split(","):
            if pair.strip():
                old, arrow, new = pair.strip().partition("->")
                if not arrow or not old:
                    raise ValueError(f"{file}:{index + 1}: replacement {pair!r} is not old->new")
                replacements.append((old, new))
        blocks.append(
            CopiedBlock(
                file=file,
                line=index + 1,
                source=match.group(1),
                replacements=tuple(replacements),
                code="\n".join(lines[index + 1 : end]),
            )
        )
    return blocks


def statements(code: str) -> list[str]:
    """The statements of ``code`` in order, each as ``ast.unparse`` writes it (a compound
    statement by its header), leaving out those marked ``# Portrait:`` with their bodies."""
    code = textwrap.dedent(code)
    nodes = sorted(
        (node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.stmt)),
        key=lambda node: (node.lineno, node.col_offset),
    )
    marked = []
    for number, line in enumerate(code.splitlines(), start=1):
        if CHANGE.match(line):
            following = [node for node in nodes if node.lineno > number]
            if not following:
                raise ValueError(f"`# Portrait:` comment on line {number} marks no statement")
            marked.append((following[0].lineno, following[0].end_lineno))
    return [
        _header(node)
        for node in nodes
        if not any(first <= node.lineno <= last for first, last in marked)
    ]


def _header(node: ast.stmt) -> str:
    """``node`` unparsed on one line; a compound statement without its body."""
    node = copy.copy(node)
    for field in BODIES:
        if getattr(node, field, None):
            setattr(node, field, [ast.Pass()] if field == "body" else [])
    return ast.unparse(node).splitlines()[0]


def source_code(dotted: str) -> str:
    """The source of a function of the installed diffusers, from its dotted path."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            target = getattr(target, name, None)
            if target is None:
                raise ValueError(f"{dotted} does not exist in the installed diffusers")
        return inspect.getsource(inspect.unwrap(target))
    raise ValueError(f"{dotted} does not name a module of the installed diffusers")


def check_block(block: CopiedBlock) -> list[str]:
    """One message per statement of the copy that is not, in order, in diffusers' source."""
    source = source_code(block.source)
    for old, new in block.replacements:
        if old not in source:
            return [f"{block.file}:{block.line}: `{old}` (replaced) is not in {block.source}"]
        source = source.replace(old, new)
    theirs = statements(source)
    ours = statements(block.code)
    if not ours:
        return [f"{block.file}:{block.line}: the copy of {block.source} holds no statement"]
    problems, position = [], 0
    for line in ours:
        try:
            position = theirs.index(line, position) + 1
        except ValueError:
            problems.append(
                f"{block.file}:{block.line}: `{line}` is not in {block.source} (after the "
                "statements before it); copy it again, or mark our change with `# Portrait:`"
            )
    return problems


def check_files(files: list[Path]) -> list[str]:
    """Every problem of every ``# Copied from diffusers.`` block in ``files``."""
    return [
        problem for file in files for block in copied_blocks(file) for problem in check_block(block)
    ]


def main() -> int:
    problems = check_files(sorted(PIPELINES.glob("*.py")))
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
