"""The notebooks run end to end (few steps, ``FACELOSS_NB_FAST=1``) in kernels of this
interpreter, and the committed ``.ipynb`` files are exactly what ``make_notebooks.py``
writes, without outputs.

The four notebooks execute concurrently, each in its own kernel process, so that they
take about the time of the slowest one plus what the cores cannot overlap.
"""

import asyncio
import importlib.util
import os
import pathlib
import sys

import nbclient
import nbformat

import faceloss_jax

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("loss_geometry", "euclidean_vs_angular", "composition", "train_and_inspect")
# Appended to every notebook: which interpreter and which faceloss_jax the kernel got.
_WHOAMI = "import sys, faceloss_jax; print(sys.executable); print(faceloss_jax.__file__)"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernel_env() -> dict[str, str]:
    """This process's environment, in fast mode and with JAX's real device count (the
    8 forced host devices of conftest would only slow the notebooks down)."""
    env = dict(os.environ, FACELOSS_NB_FAST="1", JAX_PLATFORMS="cpu")
    flags = env.pop("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


async def _execute(name: str) -> nbformat.NotebookNode | BaseException:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(_WHOAMI))
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        await client.async_execute(env=_kernel_env())
    except Exception as error:  # a failing cell: reported with the others
        return error
    return notebook


def test_committed_notebooks_are_the_generated_ones_without_outputs():
    generator = _load_generator()
    assert tuple(generator.NOTEBOOKS) == NAMES
    for name in NAMES:
        committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert committed == generator.build(name), (
            f"{name}.ipynb differs from make_notebooks.py: run python notebooks/make_notebooks.py"
        )
        for cell in committed.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def test_every_notebook_executes_in_a_kernel_of_this_interpreter():
    # One test, not one per notebook: under pytest-xdist a shared fixture would run the
    # four notebooks again in every worker.
    async def run_all():
        return await asyncio.gather(*(_execute(name) for name in NAMES))

    executed = dict(zip(NAMES, asyncio.run(run_all())))
    errors = {name: nb for name, nb in executed.items() if isinstance(nb, BaseException)}
    assert not errors, "\n\n".join(f"{name} failed:\n{error}" for name, error in errors.items())

    for name, notebook in executed.items():
        executable, package = notebook.cells[-1].outputs[0]["text"].split()
        assert pathlib.Path(executable).resolve() == pathlib.Path(sys.executable).resolve(), name
        assert package == faceloss_jax.__file__, name
        images = sum(
            "image/png" in output.get("data", {})
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.outputs
        )
        assert images >= 2, f"{name} drew {images} figures"
