"""YAML loading that remembers where each key came from, for error messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    """One validation error: file, line (1-based, 0 if unknown), dotted key and message."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '<root>'}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, not only the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class YamlDocument:
    """Parsed YAML data plus a map from key path to line number."""

    path: Path
    data: Any
    lines: dict[Loc, int]

    def line_of(self, loc: Loc) -> int:
        """Line of the deepest known prefix of ``loc`` (0 when unknown)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 0

    def problem(self, loc: Loc, message: str) -> ConfigProblem:
        key = ".".join(str(p) for p in loc)
        return ConfigProblem(str(self.path), self.line_of(loc), key, message)


def load_yaml(path: Path) -> YamlDocument:
    """Parse ``path``; unreadable or malformed files raise :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), 0, "", f"cannot read: {exc}")]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError([ConfigProblem(str(path), line, "", f"invalid YAML: {exc}")]) from exc
    lines: dict[Loc, int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return YamlDocument(path=path, data=data if data is not None else {}, lines=lines)


def _collect_lines(node: yaml.Node, loc: Loc, out: dict[Loc, int]) -> None:
    out[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*loc, str(key_node.value))
            out[child] = key_node.start_mark.line + 1
            _collect_lines(value_node, child, out)
            out[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*loc, index), out)
