"""The peers' own virtual environments under ``.peer-envs/``, created on first use.

PyTriton 0.7 needs numpy < 2 and MLServer 1.7.1 needs uvloop < 0.22, neither of which the
project's environment has, so each peer gets a venv of its own, made from the interpreter that
runs the benchmark. A venv is reused when it exists and its check imports; otherwise it is
(re)built with pip. Failure is an answer: :func:`ensure` returns the reason, it never raises.

Example::

    env = ensure("mlserver", ROOT / ".peer-envs")
    if env.ok:
        subprocess.run([env.python, "-m", "mlserver", "--help"])
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["SPECS", "EnvResult", "EnvSpec", "ensure"]


@dataclass(frozen=True)
class EnvSpec:
    """What to install, and a snippet that must run for the venv to count as usable."""

    name: str
    requirements: tuple[str, ...]
    check: str


SPECS = {
    "pytriton": EnvSpec(
        "pytriton",
        ("nvidia-pytriton==0.7.*", "numpy<2", "onnxruntime"),
        "import numpy, onnxruntime, pytriton.triton;"
        " assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__;"
        " from importlib.metadata import version as v;"
        " print('nvidia-pytriton', v('nvidia-pytriton'), 'onnxruntime', onnxruntime.__version__,"
        " 'numpy', numpy.__version__)",
    ),
    "mlserver": EnvSpec(
        "mlserver",
        ("mlserver==1.7.1", "uvloop<0.22", "onnxruntime"),
        "import numpy, onnxruntime, mlserver, uvloop;"
        " print('mlserver', mlserver.__version__, 'onnxruntime', onnxruntime.__version__,"
        " 'numpy', numpy.__version__, 'uvloop', uvloop.__version__)",
    ),
}


@dataclass
class EnvResult:
    """A usable venv (``python`` set, ``versions`` from its check) or the reason it is not."""

    name: str
    python: Path | None
    created: bool = False
    seconds: float = 0.0
    versions: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.python is not None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "python": str(self.python or "")}


def _check(python: Path, spec: EnvSpec) -> tuple[bool, str]:
    if not python.exists():
        return False, f"{python} does not exist"
    try:
        run = subprocess.run(
            [str(python), "-c", spec.check], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"{type(err).__name__}: {err}"
    if run.returncode != 0:
        return False, (run.stderr.strip().splitlines() or ["(no output)"])[-1]
    return True, run.stdout.strip()


def _tail(text: str, lines: int = 3, width: int = 300) -> str:
    """pip's last words, without its notes about local index folders, each line clipped."""
    kept = [ln for ln in text.strip().splitlines() if not ln.startswith("WARNING: Location")]
    return "\n".join(ln if len(ln) <= width else ln[:width] + " ..." for ln in kept[-lines:])


def ensure(name: str, root: Path, *, log: Path | None = None) -> EnvResult:
    """The venv ``root/name``, built if missing or broken; pip's output goes to ``log``."""
    spec = SPECS[name]
    venv = root / name
    python = venv / "bin" / "python"
    ok, info = _check(python, spec)
    if ok:
        return EnvResult(name, python, versions=info)
    start = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", *spec.requirements],
    ]
    out = log.open("a") if log else None
    try:
        for cmd in steps:
            try:
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as err:
                return EnvResult(name, None, True, time.monotonic() - start, error=str(err))
            if out:
                out.write(f"$ {' '.join(cmd)}\n{run.stdout}{run.stderr}\n")
            if run.returncode != 0:
                why = f"`{' '.join(cmd[2:])}` failed: {_tail(run.stderr or run.stdout)}"
                return EnvResult(name, None, True, time.monotonic() - start, error=why)
    finally:
        if out:
            out.close()
    ok, info = _check(python, spec)
    seconds = time.monotonic() - start
    if not ok:
        return EnvResult(
            name, None, True, seconds, error=f"installed, but the check failed: {info}"
        )
    return EnvResult(name, python, True, seconds, versions=info)
