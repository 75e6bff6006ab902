"""Reading JSON and YAML that strangers wrote, with limits: size (checked before reading), nesting
depth (checked before parsing: Python's parsers recurse) and, for YAML, no aliases (a few hundred
bytes of nested aliases expand to gigabytes: the "billion laughs"). Only regular files are read, so
a FIFO cannot block a reader forever.

Every refusal is a :class:`FileLimitError` (a ``ValueError``: the command line prints it as one line,
exit 2) naming the file, the limit and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError

MAX_JSON_BYTES = 16 << 20  # configs and run records are kilobytes; a tokenizer-sized file still fits
MAX_YAML_BYTES = 1 << 20  # recipes are a few hundred bytes
MAX_DEPTH = 64


class FileLimitError(UserError):
    """A file over a reading limit (size, depth, aliases) or not a regular file."""


def read_text(path: str | os.PathLike, max_bytes: int) -> str:
    """The UTF-8 text of regular file ``path``, refused unread past ``max_bytes``."""
    path = Path(path)
    if not path.is_file():
        raise FileLimitError(f"{path} is not a regular file; give the path of a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise FileLimitError(f"{path} is {size} bytes, over the {max_bytes}-byte limit for such a file; "
                             "is it the right file?")  # fmt: skip
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since stat
    if len(data) > max_bytes:
        raise FileLimitError(f"{path} is over the {max_bytes}-byte limit for such a file; is it right?")
    return data.decode("utf-8")


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def loads_json(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` after the depth check (``where`` names the source in messages);
    ``json.JSONDecodeError`` for malformed text, as ``json.loads`` raises it."""
    depth = _json_depth(text)
    if depth > max_depth:
        raise FileLimitError(f"{where} nests {depth} levels deep, over the limit of {max_depth}; "
                             "it is not a file inducer wrote")  # fmt: skip
    return json.loads(text)


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON in regular file ``path``, within ``max_bytes`` and ``max_depth``."""
    return loads_json(read_text(path, max_bytes), str(path), max_depth)


def read_yaml(path: str | os.PathLike, max_bytes: int = MAX_YAML_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The YAML in regular file ``path`` (safe types only), within ``max_bytes`` and ``max_depth``,
    aliases refused; ``yaml.YAMLError`` for malformed text."""
    import yaml

    text = read_text(path, max_bytes)

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader that refuses aliases and nesting past ``max_depth`` while composing."""

        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise FileLimitError(f"{path} uses a YAML alias (*name); write the value out instead")
            self.depth += 1
            if self.depth > max_depth:
                raise FileLimitError(f"{path} nests over {max_depth} levels deep; it is not a recipe")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
