"""The README's ``python -c`` snippets run as documented (each in a fresh interpreter)."""

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import SLOW_CASES, unmatched_slow_cases

REPO = pathlib.Path(__file__).resolve().parents[1]
# `python -c "…"`, possibly over several lines, the closing quote ending a line.
_SNIPPET = re.compile(r'python -c "(.*?)"\s*$', re.S | re.M)


def _snippets() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [textwrap.dedent(match.group(1)).strip() for match in _SNIPPET.finditer(text)]


def test_the_readme_has_snippets():
    assert len(_snippets()) >= 5


@pytest.mark.parametrize("index", range(len(_snippets())))
@pytest.mark.slow
def test_readme_snippet_runs(index):
    code = _snippets()[index]
    # Lines of a snippet continue the first one's indentation in the README.
    code = "\n".join(line.strip() for line in code.splitlines())
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{code}\n---\n{result.stderr[-2000:]}"


def test_a_renamed_slow_case_is_reported():
    """The guard of the fast tier: a SLOW_CASES entry that names no test is found."""
    renamed, *kept = sorted(SLOW_CASES)
    ids = [f"tests/{case}" for case in kept] + [f"tests/{renamed}_renamed"]
    assert unmatched_slow_cases(ids) == {renamed}
    assert unmatched_slow_cases(f"tests/{case}" for case in SLOW_CASES) == set()
