"""The shipped event sample: about 2,000 generated events for the demo, tests and examples.

Composition (process, events, seed) is fixed in :data:`SAMPLE`; the training set uses other
seeds, so the sample is held out from training. The file's SHA-256 is recorded next to it
(``sample.sha256``) and checked by :func:`verify_sample`. ``pysonic events sample`` regenerates
both (same seeds -> same events; the parquet bytes may differ across pyarrow versions, so after
regenerating, the new checksum is recorded too).

Example::

    events = read_events(sample_path())
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pysonic.events.dataset import concatenate, file_checksum, simulate, write_events

__all__ = ["SAMPLE", "make_sample", "sample_path", "verify_sample"]

#: (process, number of events, seed)
SAMPLE: tuple[tuple[str, int, int], ...] = (
    ("ttbar", 800, 101),
    ("qcd", 800, 102),
    ("wjets", 400, 103),
)
_DATA = Path(__file__).resolve().parent / "data"


def sample_path() -> Path:
    """Path of the shipped sample (parquet)."""
    return _DATA / "sample.parquet"


def _checksum_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def verify_sample(path: Path | None = None) -> str:
    """Check the sample against its recorded SHA-256; return it, or raise ``ValueError``."""
    path = sample_path() if path is None else Path(path)
    want = _checksum_path(path).read_text().split()[0]
    got = file_checksum(path)
    if got != want:
        msg = f"{path}: SHA-256 {got} does not match the recorded {want}"
        raise ValueError(msg)
    return got


def make_sample(path: Path | None = None, progress: Callable[[int], None] | None = None) -> Path:
    """Generate :data:`SAMPLE` into ``path`` (default: the shipped location) with its checksum."""
    path = sample_path() if path is None else Path(path)
    parts = [simulate(proc, n, seed, progress) for proc, n, seed in SAMPLE]
    write_events(concatenate(parts), path)
    _checksum_path(path).write_text(f"{file_checksum(path)}  {path.name}\n")
    return path
