"""The package as a user installs it: a wheel (not ``-e``), used from outside the repo."""

import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str | pathlib.Path, cwd: pathlib.Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def test_every_package_directory_has_an_init():
    folders = {p.parent for p in (REPO / "faceloss_jax").rglob("*.py")}
    assert [f for f in folders if not (f / "__init__.py").is_file()] == []


@pytest.mark.slow
def test_a_wheel_from_a_clean_clone_imports_describes_and_trains_one_step(tmp_path):
    clone, dist, venv, outside = (tmp_path / d for d in ("clone", "dist", "venv", "outside"))
    outside.mkdir()
    _run("git", "clone", "-q", REPO, clone, cwd=tmp_path)
    # Offline: the build uses this environment's setuptools, the new venv its packages
    # through a .pth line (a .pth file inside that folder, the editable install, is not
    # read), and faceloss_jax comes from the wheel alone.
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", dist, clone, cwd=tmp_path)  # fmt: skip
    (wheel,) = dist.glob("faceloss_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(clone).as_posix() for p in (clone / "faceloss_jax").rglob("*.py")}
    assert sources - names == set()
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                cwd=outside).strip()  # fmt: skip
    pathlib.Path(site, "_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)

    where = _run(python, "-c", "import faceloss_jax.train as t; print(t.__file__)", cwd=outside)
    assert pathlib.Path(where.strip()).is_relative_to(venv)
    config = f"--config={clone / 'configs' / 'arcface.py'}"
    described = _run(python, "-m", "faceloss_jax.main", config, "--describe", cwd=outside)
    assert "loss 'arcface'" in described
    report = _run(python, "-m", "faceloss_jax.main", config, f"--workdir={tmp_path / 'run'}",
                  "--config.num_train_steps=1", "--config.optimizer.warmup_steps=0",
                  "--config.batch_size=8", "--config.eval.max_examples=64",
                  "--config.eval.num_pairs=100", cwd=outside)  # fmt: skip
    assert "closed-set accuracy:" in report
    assert (tmp_path / "run" / "eval" / "step_1.json").is_file()
