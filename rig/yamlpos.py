"""YAML loading that remembers where every key came from.

``lab.yaml`` errors must name the file, the line and the key
(``lab.yaml:42: benches.bench-1.relays.mains.pin: ...``).  PyYAML's composer
keeps a mark on every node; this module builds plain Python data from the node
tree and, beside it, a map from each key path to its line.  Duplicate keys,
which PyYAML would silently collapse, are an error here.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

#: a lab file is small: larger ones are refused before parsing (PyYAML reads
#: about 100 KiB a second on a busy 2-core machine)
MAX_BYTES = 512 * 1024
#: nesting and values after aliases are expanded: an alias bomb or a
#: self-referring alias is refused instead of eating memory and time
MAX_DEPTH = 64
MAX_VALUES = 100_000


class YamlError(Exception):
    """A YAML problem at a known place."""

    def __init__(self, file: str, line: int, key: str, message: str):
        self.file, self.line, self.key, self.message = file, line, key, message
        super().__init__(f"{file}:{line}: {key}: {message}" if key else f"{file}:{line}: {message}")


@dataclass
class Located:
    """Data loaded from YAML, with the line of every key path."""

    data: Any
    file: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, path: tuple) -> int:
        """Line of the deepest key of ``path`` that exists in the file."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def resolve(self, loc: tuple) -> tuple:
        """Map a validator's error location onto a key path of the file.

        Union tags that pydantic puts in locations (the value of a ``kind:``
        key) are skipped; a key the file lacks (a missing field) is kept, so
        the message still names it."""
        path: tuple = ()
        node = self.data
        for part in loc:
            if isinstance(node, dict) and part in node:
                path, node = path + (part,), node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                path, node = path + (part,), node[part]
            elif isinstance(node, dict) and node.get("kind") == part:
                continue  # discriminator tag
            elif isinstance(part, (str, int)) and not str(part).startswith(("function-", "union[")):
                path, node = path + (part,), None
        return path


def dotted(path: tuple) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


class _Budget:
    def __init__(self) -> None:
        self.values = 0


def _construct(node: yaml.Node, path: tuple, file: str, lines: dict[tuple, int],
               budget: _Budget | None = None) -> Any:
    budget = budget or _Budget()
    budget.values += 1
    if budget.values > MAX_VALUES:
        raise YamlError(file, node.start_mark.line + 1, dotted(path[:1]),
                        f"more than {MAX_VALUES} values once YAML aliases are expanded: not a lab file "
                        "(an alias bomb?)")
    if len(path) > MAX_DEPTH:
        raise YamlError(file, node.start_mark.line + 1, "",
                        f"nested deeper than {MAX_DEPTH} levels (or a YAML alias that contains itself)")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlError(file, key_node.start_mark.line + 1, dotted(path),
                                "YAML merge keys (<<) are not supported")
            if isinstance(key_node, yaml.ScalarNode):
                key = _scalar(key_node)
            else:
                key = yaml.SafeLoader(" ").construct_object(key_node)
            if isinstance(key, (list, dict)):
                raise YamlError(file, key_node.start_mark.line + 1, dotted(path), "a key must be a plain value")
            key = str(key) if not isinstance(key, (str, int)) else key
            sub = path + (key,)
            if key in out:
                raise YamlError(
                    file, key_node.start_mark.line + 1, dotted(sub),
                    f"duplicate key (first given on line {lines[sub]})",
                )
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, sub, file, lines, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), file, lines, budget) for i, item in enumerate(node.value)]
    return _scalar(cast(yaml.ScalarNode, node))      # neither a mapping nor a sequence


def _scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load(path: str | Path) -> Located:
    """Load a YAML file into plain data plus key-path line numbers.  Anything
    that is not a small UTF-8 YAML text file (a directory, a device, a
    binary, a huge file) is a :class:`YamlError` naming the file."""
    path = Path(path)
    file = str(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise YamlError(file, 0, "", "is a directory, not a lab file")
        if not stat.S_ISREG(info.st_mode):
            raise YamlError(file, 0, "", "is not a regular file (a device or a pipe?), not a lab file")
        if info.st_size > MAX_BYTES:
            raise YamlError(file, 0, "", f"is {info.st_size} bytes: too big for a lab file (at most {MAX_BYTES})")
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise YamlError(file, 0, "", "file not found") from None
    except OSError as exc:
        raise YamlError(file, 0, "", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise YamlError(file, 0, "", f"is over {MAX_BYTES} bytes: too big for a lab file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlError(file, line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                                        "a lab file is YAML in UTF-8; is this the right file?") from None
    return loads(text, file)


def loads(text: str, file: str = "<string>") -> Located:
    if len(text) > MAX_BYTES:
        raise YamlError(file, 0, "", f"is over {MAX_BYTES} characters: too big for a lab file")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise YamlError(file, 0, "", f"nested too deeply: not a lab file (at most {MAX_DEPTH} levels)") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlError(file, line, "", f"not a YAML text file: character #x{char:04x} at offset {exc.position} "
                                        f"({exc.reason}); is this the right file?") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark is not None and "flow" in (exc.context or ""):
            mark = exc.context_mark  # an unclosed [ or {: name the line that opened it
        line = mark.line + 1 if mark else 0
        problem = exc.problem or str(exc)
        context = f" ({exc.context})" if exc.context else ""
        raise YamlError(file, line, key_at(text, line), f"YAML syntax error: {problem}{context}") from None
    if node is None:
        return Located({}, file, {(): 1})
    lines: dict[tuple, int] = {}
    try:
        data = _construct(node, (), file, lines)
    except RecursionError:
        raise YamlError(file, 0, "", f"nested too deeply: not a lab file (at most {MAX_DEPTH} levels)") from None
    return Located(data, file, lines)


def key_at(text: str, line: int) -> str:
    """Best guess at the dotted key of ``line`` (1-based) from indentation,
    for syntax errors, where no node tree exists to ask."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    path: list[tuple[int, str]] = []
    for raw in lines[:line]:
        stripped = raw.split("#", 1)[0].rstrip()
        m = re.match(r"^(\s*)(?:- )?([^\s:#][^:#]*?)\s*:(\s|$)", stripped)
        if not m:
            continue
        indent = len(m.group(1))
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, m.group(2).strip("'\"")))
    return ".".join(k for _i, k in path)
