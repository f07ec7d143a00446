"""Executes the notebooks of this directory from their sources and writes them, with their
outputs, as the committed ``.ipynb`` files:

    python notebooks/run_notebooks.py                   # all four, concurrently
    python notebooks/run_notebooks.py composition       # or some of them

Each notebook is a jupytext percent-format source, ``notebooks/<name>.py``, paired with
``notebooks/<name>.ipynb`` (``jupytext.toml``). The ``.py`` is what is edited and reviewed;
this script reads it, runs it in a kernel of this interpreter (the full run:
``FACELOSS_NB_FAST`` is removed from the kernel's environment, and JAX sees the machine's
real devices, not the 8 forced host devices of the tests) and writes the executed notebook,
so that its figures can be browsed in the repository. ``tests/test_notebooks.py`` runs the
same sources in fast mode and checks that every ``.ipynb`` holds exactly the cells of its
``.py``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import sys
import time

import jupytext
import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
NAMES = ("loss_geometry", "euclidean_vs_angular", "composition", "train_and_inspect")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
# Inline figures as PNG at a modest resolution, so the executed notebooks stay small.
_INLINE_SETUP = (
    "%config InlineBackend.figure_formats = ['png']\n"
    "%config InlineBackend.rc = {'figure.dpi': 80, 'savefig.dpi': 80}"
)
# What a terminal would leave of a line: the text after its last carriage return.
_OVERWRITTEN = re.compile(r"[^\n]*\r(?=[^\n])")


def source(name: str) -> pathlib.Path:
    return HERE / f"{name}.py"


def from_source(name: str) -> nbformat.NotebookNode:
    """Notebook ``name`` as its percent-format source describes it, without outputs and
    with stable cell ids (so that a rerun changes only the outputs)."""
    notebook = jupytext.read(source(name), fmt="py:percent")
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"{name}-{index}"
        cell["metadata"] = {}
    notebook.metadata = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    nbformat.validate(notebook)
    return notebook


def kernel_env(*, fast: bool) -> dict[str, str]:
    """This process's environment, in fast mode or not, with JAX's real device count."""
    env = dict(os.environ)
    env.pop("FACELOSS_NB_FAST", None)
    if fast:
        env["FACELOSS_NB_FAST"] = "1"
    flags = env.pop("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


async def execute(
    notebook: nbformat.NotebookNode, env: dict[str, str], *, timeout: int
) -> nbformat.NotebookNode:
    """Runs ``notebook`` in place in a fresh kernel, from the notebooks' directory; the
    inline figure settings are run first, in the kernel only (not added as a cell)."""
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNELSPEC["name"],
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(HERE)}},
    )
    async with client.async_setup_kernel(env=env):
        await client.kc.execute_interactive(_INLINE_SETUP, store_history=False, timeout=timeout)
        for index, cell in enumerate(notebook.cells):
            await client.async_execute_cell(cell, index)
    return notebook


def tidy_streams(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Merges each cell's consecutive stdout (stderr) outputs into one and keeps, of every
    line, what a terminal would show: the final state of a progress bar, not its frames."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            previous = outputs[-1] if outputs else None
            if (
                output.output_type == "stream"
                and previous is not None
                and previous.output_type == "stream"
                and previous.name == output.name
            ):
                previous.text += output.text
            else:
                outputs.append(output)
        for output in outputs:
            if output.output_type == "stream":
                text = _OVERWRITTEN.sub("", output.text.replace("\r\n", "\n"))
                output.text = "\n".join(line.rstrip() for line in text.split("\n"))
        cell.outputs = [o for o in outputs if o.output_type != "stream" or o.text.strip()]
    return notebook


async def _run(names: tuple[str, ...]) -> dict[str, nbformat.NotebookNode | BaseException]:
    env = kernel_env(fast=False)

    async def one(name):
        start = time.perf_counter()
        try:
            notebook = await execute(from_source(name), env, timeout=3600)
        except Exception as error:  # a failing cell: reported with the others
            return error
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        return notebook

    return dict(zip(names, await asyncio.gather(*(one(name) for name in names))))


def main(argv: list[str]) -> int:
    names = tuple(argv) or NAMES
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        print(f"unknown notebooks {unknown}; known: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    failed = 0
    for name, result in asyncio.run(_run(names)).items():
        if isinstance(result, BaseException):
            print(f"{name} failed, {name}.ipynb left as it was:\n{result}", file=sys.stderr)
            failed += 1
            continue
        path = HERE / f"{name}.ipynb"
        nbformat.write(tidy_streams(result), path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
