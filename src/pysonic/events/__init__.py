"""Event generation (Pythia8 via ``pythia8mc``), jet clustering (FastJet) and model inputs.

Needs the ``events`` extra (``pip install 'pysonic[events]'``). See :mod:`.generate`,
:mod:`.features` (jets, labels, feature lists) and :mod:`.store` (the parquet schema).

Example::

    jets = generate_jets("ttbar", n=100, seed=1)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["generate_jets"]


def generate_jets(
    process: str, n: int, seed: int, progress: Callable[[int], None] | None = None
) -> dict[str, np.ndarray]:
    """Generate ``n`` events and return all their AK8 jets (rows), tagged with process/event."""
    from pysonic.events.features import build_jets
    from pysonic.events.generate import generate

    parts = []
    for i, ev in enumerate(generate(process, n, seed)):
        jets = build_jets(ev)
        if jets:
            count = len(jets["label"])
            jets["event"] = np.full(count, i, np.int64)
            jets["process"] = np.array([process] * count)
            parts.append(jets)
        if progress is not None:
            progress(1)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
