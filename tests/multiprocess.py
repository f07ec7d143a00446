"""Launches N real JAX processes on localhost, as a multi-host job would run.

The parent (a test) calls ``launch(script, num_processes=2)``: each process runs
``python -c script`` with 4 host CPU devices (``XLA_FLAGS``) and the coordinates of
the job in its environment; the script calls ``initialize()`` first, which selects
gloo CPU collectives and calls ``jax.distributed.initialize`` on a free localhost
port. ``Job.wait`` waits for all of them under a timeout, kills every process of
the job on a timeout or on the test's exit, and raises ``JobError`` with the logs of
every process that failed (or of all of them on a timeout).

    job = multiprocess.launch(SCRIPT, num_processes=2, args=[workdir])
    outputs = job.wait(timeout=120)  # raises JobError with the failing logs

In the script::

    import multiprocess  # tests/ is on sys.path (the parent passes it in PYTHONPATH)
    multiprocess.initialize()
"""

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
ENV_COORDINATOR = "FL_TEST_COORDINATOR"
ENV_NUM_PROCESSES = "FL_TEST_NUM_PROCESSES"
ENV_PROCESS_ID = "FL_TEST_PROCESS_ID"
# A peer that stops answering is declared dead after this long (JAX's default is 100 s).
HEARTBEAT_TIMEOUT_S = 10
SHUTDOWN_TIMEOUT_S = 10


class JobError(RuntimeError):
    """A process of the job failed or the job ran past its timeout; the message holds
    the return codes and the logs of the processes concerned."""


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def initialize() -> None:
    """In a launched process: gloo CPU collectives and ``jax.distributed.initialize``
    with the coordinates the parent put in the environment. Call it before any other
    JAX call."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ[ENV_COORDINATOR],
        num_processes=int(os.environ[ENV_NUM_PROCESSES]),
        process_id=int(os.environ[ENV_PROCESS_ID]),
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        initialization_timeout=60,
    )


def worker_env(
    *,
    num_processes: int,
    process_id: int,
    devices_per_process: int,
    coordinator: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one process: host devices, CPU platform, job coordinates."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    pythonpath = [str(TESTS), str(REPO), env.get("PYTHONPATH", "")]
    env.update(
        XLA_FLAGS=" ".join(flags),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(p for p in pythonpath if p),
        PYTHONUNBUFFERED="1",
        **{
            ENV_COORDINATOR: coordinator,
            ENV_NUM_PROCESSES: str(num_processes),
            ENV_PROCESS_ID: str(process_id),
        },
    )
    env.update(extra or {})
    return env


@dataclasses.dataclass
class Job:
    """The processes of one launch; their combined stdout/stderr go to log files."""

    processes: list[subprocess.Popen]
    logs: list[pathlib.Path]

    def log(self, index: int) -> str:
        """What process ``index`` has printed so far."""
        return self.logs[index].read_text(errors="replace", encoding="utf-8")

    def kill(self, index: int | None = None, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to process ``index`` (all still running when None)."""
        indices = range(len(self.processes)) if index is None else [index]
        for i in indices:
            if self.processes[i].poll() is None:
                self.processes[i].send_signal(sig)

    def wait(self, timeout: float, *, expect_success: bool = True) -> list[str]:
        """Waits for every process; returns their logs.

        Raises:
          JobError: a process is still running after ``timeout`` seconds (all are
            then killed), or, with ``expect_success``, one exited with a non-zero
            code; the message holds the logs of the processes concerned.
        """
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                self.kill()
                for p in self.processes:
                    p.wait()
                raise JobError(
                    f"the job ran past its timeout of {timeout:.0f} s; killed.\n"
                    + self._report(range(len(self.processes)))
                ) from None
        failed = [i for i, p in enumerate(self.processes) if p.returncode != 0]
        if expect_success and failed:
            raise JobError(f"processes {failed} failed.\n" + self._report(failed))
        return [self.log(i) for i in range(len(self.processes))]

    @property
    def returncodes(self) -> list[int | None]:
        return [p.poll() for p in self.processes]

    def _report(self, indices: Sequence[int]) -> str:
        return "\n".join(
            f"----- process {i} (return code {self.processes[i].poll()}) -----\n{self.log(i)}"
            for i in indices
        )


_RUNNING: list[Job] = []


def launch(
    script: str,
    *,
    num_processes: int,
    devices_per_process: int = 4,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_dir: str | os.PathLike | None = None,
) -> Job:
    """Starts ``num_processes`` processes running ``python -c script *args``.

    Args:
      script: Python source; it calls ``multiprocess.initialize()`` before using JAX
        (or skips it when ``num_processes == 1`` and it wants a plain process).
      num_processes: the size of the job.
      devices_per_process: host CPU devices of each process.
      args: command-line arguments of every process (``sys.argv[1:]``).
      env: extra environment variables of every process.
      log_dir: where ``process_<i>.log`` go (a new temporary directory by default).

    Returns:
      The running ``Job``; ``Job.wait`` collects it.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"need at least one process and one device; got {num_processes=}, "
            f"{devices_per_process=}"
        )
    log_dir = pathlib.Path(log_dir or tempfile.mkdtemp(prefix="multiprocess_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    coordinator = f"localhost:{free_port()}"
    processes, logs = [], []
    for process_id in range(num_processes):
        logs.append(log_dir / f"process_{process_id}.log")
        with open(logs[-1], "w", encoding="utf-8") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, *map(str, args)],
                    cwd=REPO,
                    env=worker_env(
                        num_processes=num_processes,
                        process_id=process_id,
                        devices_per_process=devices_per_process,
                        coordinator=coordinator,
                        extra=env,
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    job = Job(processes, logs)
    _RUNNING.append(job)
    return job


def kill_all() -> None:
    """Kills every process still running of every job launched here (test teardown)."""
    while _RUNNING:
        job = _RUNNING.pop()
        job.kill()
        for process in job.processes:
            process.wait()
