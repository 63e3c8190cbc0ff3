"""Datasets on disk: jets as awkward arrays in parquet.

Schema (one record per AK8 jet; shapes without the jet axis; float32 unless noted):
``pf_points`` [2,100], ``pf_features`` [20,100] (names: ``features.PF_FEATURES``), ``pf_mask``
[1,100], ``pf_vectors`` [4,100] (px, py, pz, E), ``sv_points`` [2,10], ``sv_features`` [11,10]
(``features.SV_FEATURES``), ``sv_mask`` [1,10], ``label`` int64 (index into JET_CLASSES),
``jet_pt``, ``jet_eta``, ``jet_phi``, ``jet_mass``, ``process`` (string), ``event`` int64.

Example::

    write_jets(jets, Path("ttbar.parquet"))
    arrays = load_jets(Path("ttbar.parquet"))   # numpy, ready for the models
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["file_checksum", "load_jets", "write_jets"]


def write_jets(jets: dict[str, np.ndarray], path: Path) -> Path:
    import awkward as ak

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ak.to_parquet(
        ak.Array(
            {k: ak.from_numpy(v, regulararray=True) if v.ndim > 1 else v for k, v in jets.items()}
        ),
        path,
        compression="zstd",
    )
    return path


def load_jets(path: Path) -> dict[str, np.ndarray]:
    """Load a jets file back into numpy arrays with the models' input names."""
    import awkward as ak

    arr = ak.from_parquet(Path(path))
    return {
        f: ak.to_numpy(arr[f]) if f != "process" else np.asarray(ak.to_list(arr[f]))
        for f in arr.fields
    }


def file_checksum(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
