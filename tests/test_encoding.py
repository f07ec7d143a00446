"""Every text file the project reads or writes is UTF-8, whatever the locale.

``open(path)``, ``Path.read_text()`` and ``Path.write_text()`` without ``encoding=`` use
the locale's encoding (``locale.getpreferredencoding``): under a non-UTF-8 locale a
README, a ``property`` file, an IJB list or a ``config.json`` with a non-ASCII
character reads differently or fails. This test parses the sources with ``ast`` and
names each text-mode call that leaves the encoding to the locale.
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("faceloss_jax", "experiments", "configs", "tests", "notebooks")
# ``X.open`` of these names is not a text-file open (os.open: a descriptor; the others
# read or write bytes).
NOT_TEXT_OPEN = {"os", "gzip", "bz2", "lzma", "tarfile", "zipfile", "Image", "h5py", "wave"}


def _constant_mode(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _mode(call: ast.Call, position: int) -> str | None:
    """The call's mode argument ("r" when absent); None when it is not a literal."""
    for keyword in call.keywords:
        if keyword.arg == "mode":
            return _constant_mode(keyword.value)
    if len(call.args) > position:
        return _constant_mode(call.args[position])
    return "r"


def locale_dependent_calls(source: str) -> list[tuple[int, str]]:
    """(line, call) of each text-mode open/read_text/write_text without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        if any(k.arg == "encoding" for k in node.keywords) or any(
            k.arg is None
            for k in node.keywords  # **kwargs: cannot tell
        ):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            found.append((node.lineno, f".{func.attr}()"))
        elif isinstance(func, ast.Name) and func.id == "open":
            mode = _mode(node, 1)
            if mode is not None and "b" not in mode:
                found.append((node.lineno, "open()"))
        elif isinstance(func, ast.Attribute) and func.attr == "open":
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in NOT_TEXT_OPEN:
                continue
            mode = _mode(node, 0 if not (isinstance(owner, ast.Name) and owner.id == "io") else 1)
            if mode is not None and "b" not in mode:
                found.append((node.lineno, ".open()"))
    return found


def test_the_scanner_finds_text_mode_calls_without_an_encoding():
    source = "\n".join(
        [
            "p.read_text()",  # 1: flagged
            "p.write_text(s, encoding='utf-8')",
            "open(f)",  # 3: flagged
            "open(f, 'rb')",
            "open(f, 'w', newline='')",  # 5: flagged
            "p.open('a')",  # 6: flagged
            "p.open('wb')",
            "os.open(f, os.O_RDONLY)",
            "open(f, mode='r', encoding='utf-8')",
        ]
    )
    assert [line for line, _ in locale_dependent_calls(source)] == [1, 3, 5, 6]


def test_every_text_file_is_read_and_written_as_utf8():
    offenders = []
    for directory in SOURCES:
        for path in sorted((REPO / directory).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            name = path.relative_to(REPO).as_posix()
            for line, call in locale_dependent_calls(source):
                offenders.append(f"{name}:{line}: {call}")
    assert not offenders, 'pass encoding="utf-8":\n' + "\n".join(offenders)
