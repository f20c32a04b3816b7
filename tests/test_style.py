"""Every line of the package fits in 110 characters, docstrings and error messages included (ruff's E501
is off because the formatter cannot wrap strings and comments; this test is the limit for them)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tunesmith"
LIMIT = 110  # ruff's line-length in pyproject.toml


def test_no_line_is_longer_than_the_limit():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {len(line)} characters"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > LIMIT
    ]
    assert not long, "lines over 110 characters:\n" + "\n".join(long)
