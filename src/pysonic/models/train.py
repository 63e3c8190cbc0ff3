"""Train a jet tagger (ParticleNet-Lite by default) on generated events, on the CPU.

The training set is generated here (Pythia8 + FastJet, :func:`make_training_set`) with seeds
that the shipped sample does not use, so the sample stays a held-out test set. Jets are AK8 with
5-class truth labels (top / W / b / light / gluon); the figure of merit is the top-vs-QCD ROC AUC,
with the discriminant p(top) / (p(top) + p(b) + p(light) + p(gluon)) and QCD = jets of QCD
events.

Example::

    files = make_training_set(Path(".pysonic-train"), {"ttbar": 8000, "qcd": 8000})
    result = train_tagger(load_training_jets(files), epochs=6)
    save_weights(result.model, WEIGHTS_DIR / "particlenet_lite.npz")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pysonic.models._extras import require_torch
from pysonic.models.evaluate import top_vs_qcd
from pysonic.models.specs import MODELS

__all__ = [
    "TRAIN_SEED_BASE",
    "TrainResult",
    "load_training_jets",
    "make_training_set",
    "train_tagger",
]

#: seeds of training files start here (the shipped sample uses 101..103)
TRAIN_SEED_BASE = 10_000
_CHUNK = 2000  # events per generated file: parallel work units, resumable


def _generate_file(args: tuple[str, int, int, str]) -> str:
    from pysonic.events.dataset import simulate, write_events

    process, n, seed, path = args
    write_events(simulate(process, n, seed), Path(path))
    return path


def make_training_set(
    data_dir: Path,
    counts: Mapping[str, int],
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Generate (or reuse) training files of ``counts[process]`` events, ``_CHUNK`` per file."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    jobs, files = [], []
    for p_index, (process, n) in enumerate(sorted(counts.items())):
        for c in range(math.ceil(n / _CHUNK)):
            size = min(_CHUNK, n - c * _CHUNK)
            seed = TRAIN_SEED_BASE + 1000 * p_index + c
            path = data_dir / f"{process}_{seed}_{size}.parquet"
            files.append(path)
            if path.exists():
                if progress is not None:
                    progress(size)
            else:
                jobs.append((process, size, seed, str(path)))
    if jobs:
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            for (_, size, _, _), _done in zip(jobs, pool.map(_generate_file, jobs), strict=True):
                if progress is not None:
                    progress(size)
    return files


def load_training_jets(files: list[Path]) -> dict[str, np.ndarray]:
    """AK8 jet inputs of all files (with ``label`` and ``process``)."""
    from pysonic.events.dataset import read_events
    from pysonic.events.inputs import jet_inputs

    parts = [jet_inputs(read_events(path), "ak8") for path in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass
class TrainResult:
    model: Any
    auc: float  #: top vs QCD on the validation jets
    accuracy: float  #: 5-class, validation
    n_train: int
    n_val: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def _predict(model: Any, inputs: list[np.ndarray], batch: int = 512) -> np.ndarray:
    torch = require_torch()
    model.eval()
    with torch.no_grad():
        out = [
            model(*[torch.from_numpy(x[i : i + batch]) for x in inputs]).numpy()
            for i in range(0, len(inputs[0]), batch)
        ]
    return np.concatenate(out)


def train_tagger(
    jets: Mapping[str, np.ndarray],
    *,
    name: str = "particlenet_lite",
    epochs: int = 6,
    batch_size: int = 128,
    lr: float = 3e-3,
    val_fraction: float = 0.2,
    seed: int = 7,
    threads: int = 2,
    progress: Callable[[str, float], None] | None = None,
) -> TrainResult:
    """Train ``name`` (a builder in :data:`pysonic.models.export.BUILDERS`) on 5-class labels.

    AdamW with a one-cycle learning rate; the validation split is by jet, stratified by
    nothing but a fixed shuffle. ``progress(stage, fraction)`` is called once per batch.
    """
    torch = require_torch()
    from pysonic.models.export import build

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    spec = MODELS[name]
    names = [t.name for t in spec.inputs]
    n = len(jets["label"])
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(n * val_fraction)
    val, train = order[:n_val], order[n_val:]
    x_train = [np.ascontiguousarray(jets[k][train]) for k in names]
    y_train = torch.from_numpy(jets["label"][train].astype(np.int64))
    model = build(name, trained=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    history: list[dict[str, float]] = []
    start, step = time.monotonic(), 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train)).numpy()
        total = 0.0
        for i in range(0, len(train), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            logits = model.logits(*[torch.from_numpy(x[idx]) for x in x_train])
            loss = torch.nn.functional.cross_entropy(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            step += 1
            if progress is not None:
                progress(f"epoch {epoch + 1}/{epochs}", step / steps)
        probs = _predict(model, [jets[k][val] for k in names])
        labels = jets["label"][val]
        auc = top_vs_qcd(probs, labels, jets["process"][val])
        acc = float((probs.argmax(axis=1) == labels).mean())
        history.append({"epoch": epoch + 1, "loss": total / len(train), "auc": auc, "acc": acc})
    model.eval()
    last = history[-1]
    return TrainResult(
        model, last["auc"], last["acc"], len(train), n_val, time.monotonic() - start, history
    )
