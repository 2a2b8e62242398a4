"""Griffe extension: indexing written in docstrings stays text in the API reference.

The docstrings are plain prose with shapes and indices (`trials[c][i]`, `[iteration][sample]`);
Markdown would read two brackets in a row as a reference link. This wraps such runs in backticks
when they are not in code already.
"""

from __future__ import annotations

import re

import griffe

# Two or more bracket groups in a row (after an optional name), outside backticks.
_INDEXING = re.compile(r"(?<![`\w])(\w*(?:\[[^\[\]\s`]*\]){2,})(?![`\w])")


def escape_indexing(text: str) -> str:
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside inline code
        parts[i] = _INDEXING.sub(r"`\1`", parts[i])
    return "`".join(parts)


class EscapeIndexing(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_indexing(obj.docstring.value)
