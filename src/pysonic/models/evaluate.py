"""Tagger figures of merit without torch: ROC AUC, top vs QCD, an ONNX model on jets.

Example::

    auc = sample_auc(Path("model_repository/particlenet_lite/1/model.onnx"), jets)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pysonic.models.specs import JET_CLASSES

__all__ = ["onnx_predict", "roc_auc", "sample_auc", "top_vs_qcd"]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        msg = f"ROC AUC needs both classes (got {n_pos} positive, {n_neg} negative)"
        raise ValueError(msg)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1], strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def top_vs_qcd(probs: np.ndarray, labels: np.ndarray, process: np.ndarray) -> float:
    """Top-vs-QCD AUC: top-labelled jets of ttbar events vs all jets of QCD events."""
    top = (labels == JET_CLASSES.index("top")) & (process == "ttbar")
    qcd = process == "qcd"
    qcd_probs = probs[:, [JET_CLASSES.index(c) for c in ("b", "light", "gluon")]].sum(axis=1)
    score = probs[:, 0] / np.maximum(probs[:, 0] + qcd_probs, 1e-12)
    keep = top | qcd
    return roc_auc(score[keep], top[keep])


def onnx_predict(
    model_path: Path, jets: Mapping[str, np.ndarray], batch: int = 256, threads: int = 2
) -> np.ndarray:
    """Run an ONNX tagger (onnxruntime, CPU) over jets in batches; the first output."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    n = len(jets[names[0]])
    out = [
        session.run(None, {k: jets[k][i : i + batch] for k in names})[0] for i in range(0, n, batch)
    ]
    return np.concatenate(out)


def sample_auc(model_path: Path, jets: Mapping[str, np.ndarray]) -> float:
    """Top-vs-QCD AUC of an ONNX tagger on jets that carry ``label`` and ``process``."""
    return top_vs_qcd(onnx_predict(model_path, jets), jets["label"], jets["process"])
