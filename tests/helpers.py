"""Small builders shared by the data tests."""

import json
from pathlib import Path

from tests.test_format import fixture_lines


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def numbered_fixture_lines(n: int) -> list[str]:
    """``n`` valid one-step lines whose ``expression_id`` is their line number (0-based)."""
    base = [json.loads(line) for line in fixture_lines()]
    lines = []
    for i in range(n):
        record = dict(base[i % len(base)])
        record["expression_id"] = i
        lines.append(json.dumps(record))
    return lines
