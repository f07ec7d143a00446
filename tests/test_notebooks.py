"""The notebooks' percent-format sources (``notebooks/<name>.py``) run end to end (few
steps, ``FACELOSS_NB_FAST=1``) in kernels of this interpreter, and each committed
``.ipynb`` holds exactly the cells of its source, executed (by the full run of
``python notebooks/run_notebooks.py``), so that the two cannot drift.

The four notebooks execute concurrently, each in its own kernel process, so that they
take about the time of the slowest one plus what the cores cannot overlap.
"""

import asyncio
import importlib.util
import pathlib
import sys

import nbformat
import pytest

import faceloss_jax

pytestmark = pytest.mark.slow

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("loss_geometry", "euclidean_vs_angular", "composition", "train_and_inspect")
# Appended to every notebook: which interpreter and which faceloss_jax the kernel got.
_WHOAMI = "import sys, faceloss_jax; print(sys.executable); print(faceloss_jax.__file__)"
_REGENERATE = "python notebooks/run_notebooks.py"


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", NOTEBOOKS / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [
        (cell.cell_type, cell.source)
        for cell in notebook.cells
        if cell.cell_type in ("code", "markdown")
    ]


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_every_notebook_is_paired_with_its_percent_source():
    assert runner.NAMES == NAMES
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    pairing = (NOTEBOOKS / "jupytext.toml").read_text(encoding="utf-8")
    assert 'formats = "ipynb,py:percent"' in pairing
    for name in NAMES:
        assert runner.source(name).read_text(encoding="utf-8").startswith("# %%"), name


def test_committed_notebooks_are_their_sources_executed():
    for name in NAMES:
        committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(committed)
        assert _cells(committed) == _cells(runner.from_source(name)), (
            f"{name}.ipynb differs from {name}.py: run {_REGENERATE}"
        )
        code = [cell for cell in committed.cells if cell.cell_type == "code"]
        # Executed top to bottom in one kernel, without errors.
        assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
            f"{name}.ipynb is not a complete run: run {_REGENERATE}"
        )
        errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{name}.ipynb holds errors: {errors}"
        assert _images(committed) >= 2, name


def test_every_notebook_executes_in_a_kernel_of_this_interpreter():
    # One test, not one per notebook: under pytest-xdist a shared fixture would run the
    # four notebooks again in every worker.
    env = dict(runner.kernel_env(fast=True), JAX_PLATFORMS="cpu")

    async def one(name):
        notebook = runner.from_source(name)
        notebook.cells.append(nbformat.v4.new_code_cell(_WHOAMI))
        try:
            return await runner.execute(notebook, env, timeout=300)
        except Exception as error:  # a failing cell: reported with the others
            return error

    async def run_all():
        return await asyncio.gather(*(one(name) for name in NAMES))

    executed = dict(zip(NAMES, asyncio.run(run_all())))
    errors = {name: nb for name, nb in executed.items() if isinstance(nb, BaseException)}
    assert not errors, "\n\n".join(f"{name} failed:\n{error}" for name, error in errors.items())

    for name, notebook in executed.items():
        executable, package = notebook.cells[-1].outputs[0]["text"].split()
        assert pathlib.Path(executable).resolve() == pathlib.Path(sys.executable).resolve(), name
        assert package == faceloss_jax.__file__, name
        assert _images(notebook) >= 2, f"{name} drew {_images(notebook)} figures"
