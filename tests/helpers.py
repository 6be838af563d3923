"""The fixture files (inside the repository: no test reads outside the clone) and small builders."""

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE = FIXTURES / "original_sample.jsonl"  # 18 lines written by the original system
SAMPLE_PROBLEMS = FIXTURES / "original_sample_problems.json"  # their problems' X and y


def fixture_lines() -> list[str]:
    return SAMPLE.read_text().splitlines()


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
