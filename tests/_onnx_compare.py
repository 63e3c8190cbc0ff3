"""Comparing a fresh ONNX export with the shipped file (imported by the model tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_same_export(fresh: Path, shipped: Path) -> None:
    """The shipped file is what a fresh export gives: the same graph bytes, and the same weights
    up to float32 rounding (torch folds BatchNorm into Conv weights with the CPU's SIMD
    kernels, whose rounding differs between CPU models; seen between two x86-64 machines)."""
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(fresh)), onnx.load(str(shipped))
    if a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True):
        return
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys(), "run: pysonic models export"
    for key, arr in wa.items():
        assert arr.dtype == wb[key].dtype, key
        assert arr.shape == wb[key].shape, key
        if arr.dtype.kind == "f":
            scale = float(np.abs(wb[key]).max(initial=0.0))
            np.testing.assert_allclose(arr, wb[key], rtol=1e-6, atol=1e-6 * scale, err_msg=key)
        else:
            np.testing.assert_array_equal(arr, wb[key])
    for model in (a, b):
        del model.graph.initializer[:]
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True), (
        "run: pysonic models export"
    )
