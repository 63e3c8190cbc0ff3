"""DeepMET-like missing transverse momentum from per-particle weights (our own implementation).

CMS's DeepMET (Mokhtar et al., CMS-DP-2021/033) does not regress MET directly: it learns one weight
``w_i`` in [0, 1] per PF candidate and sums ``MET = -sum_i w_i (px_i, py_i)``. Keeping that form
makes the output a reweighted PF-MET (pileup and mismeasured particles get ``w -> 0``) and keeps it
linear in the particles' momenta, which is why it generalises better than a free regression.

Inputs as :data:`pysonic.models.specs.DEEPMET`: continuous ``pf_features`` [N, P, 8] (see
:data:`~pysonic.models.specs.DEEPMET_FEATURES`) and three categorical int32 inputs [N, P, 1]
(charge, particle class, fromPV), each embedded (8 dims; the embeddings are ONNX ``Gather``, which
takes int32 indices directly). Momenta, impact parameters and masses span decades, so they are
compressed with ``asinh`` (linear near 0, logarithmic above 1) before a BatchNorm; eta and phi are
already O(1). A per-particle MLP (pointwise ``Conv1d``, 64-32-16, BatchNorm, ReLU) ends in a
sigmoid weight.

Padding is ``pf_pdgid == 0``. The padded particles' continuous features and categories are
replaced by zeros with ``where`` (so even inf/NaN junk cannot leak, which a multiply would let
through), and their weight is multiplied by the mask: a padded particle contributes exactly zero.
Every operation is per particle or a sum over particles, so the export is dynamic in N without
data-dependent Python control flow.

Example::

    model = build_deepmet().eval()
    met = model(pf_features, pf_charge, pf_pdgid, pf_frompv)  # [N, 2] = (MET_x, MET_y)
"""

from __future__ import annotations

from pysonic.models._extras import require_torch
from pysonic.models.specs import DEEPMET, DEEPMET_FEATURES

torch = require_torch()
nn = torch.nn

__all__ = ["DeepMETModel", "build_deepmet"]

#: continuous features that span decades and are compressed with asinh (eta and phi are not)
_COMPRESSED = ("px", "py", "pt", "d0", "dz", "mass")
_VOCABS = tuple(t.vocab or 0 for t in DEEPMET.inputs[1:])  # charge, pdgid, frompv


def _asinh(x: torch.Tensor) -> torch.Tensor:
    """``asinh`` from ONNX-exportable ops (the TorchScript exporter has no ``aten::asinh``)."""
    a = x.abs()
    return torch.sign(x) * torch.log(a + torch.sqrt(a * a + 1.0))


class DeepMETModel(nn.Module):
    """Per-particle weights in [0, 1] and ``MET = -sum_i w_i (px_i, py_i)``; see the module doc."""

    def __init__(
        self,
        *,
        num_features: int = len(DEEPMET_FEATURES),
        vocabs: tuple[int, ...] = _VOCABS,
        embed: int = 8,
        hidden: tuple[int, ...] = (64, 32, 16),
    ) -> None:
        super().__init__()
        self.vocabs = vocabs
        self.embeddings = nn.ModuleList(nn.Embedding(v, embed) for v in vocabs)
        compress = torch.tensor([f in _COMPRESSED for f in DEEPMET_FEATURES[:num_features]])
        self.register_buffer("compress", compress.view(1, 1, -1), persistent=False)
        self.norm = nn.BatchNorm1d(num_features)
        layers: list[nn.Module] = []
        dim = num_features + embed * len(vocabs)
        for ch in hidden:
            layers += [nn.Conv1d(dim, ch, 1, bias=False), nn.BatchNorm1d(ch), nn.ReLU()]
            dim = ch
        layers.append(nn.Conv1d(dim, 1, 1))
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def mask(pf_pdgid: torch.Tensor) -> torch.Tensor:
        """Boolean [N, P, 1]: True for real particles (particle class 0 is padding)."""
        return pf_pdgid != 0

    def weights(
        self,
        pf_features: torch.Tensor,
        pf_charge: torch.Tensor,
        pf_pdgid: torch.Tensor,
        pf_frompv: torch.Tensor,
    ) -> torch.Tensor:
        """Per-particle weights [N, P] in [0, 1]; exactly 0 for padded particles.

        A method of its own so tests (and users) can inspect or replace the learned part while
        :meth:`forward` keeps the physics (masking and the momentum sum).
        """
        mask = self.mask(pf_pdgid)
        zero = torch.zeros((), dtype=pf_features.dtype)
        x = torch.where(mask, pf_features, zero)
        x = torch.where(self.compress, _asinh(x), x)
        x = self.norm(x.transpose(1, 2))  # [N, F, P]
        parts = [x]
        for emb, vocab, cat in zip(
            self.embeddings, self.vocabs, (pf_charge, pf_pdgid, pf_frompv), strict=True
        ):
            idx = torch.where(mask, cat, torch.zeros((), dtype=cat.dtype)).clamp(0, vocab - 1)
            parts.append(emb(idx.squeeze(-1)).transpose(1, 2))  # [N, E, P]
        logits = self.mlp(torch.cat(parts, dim=1)).squeeze(1)  # [N, P]
        return torch.sigmoid(logits) * mask.squeeze(-1).to(logits.dtype)

    def forward(
        self,
        pf_features: torch.Tensor,
        pf_charge: torch.Tensor,
        pf_pdgid: torch.Tensor,
        pf_frompv: torch.Tensor,
    ) -> torch.Tensor:
        """MET [N, 2] = ``-sum_i w_i (px_i, py_i)`` over the real particles."""
        mask = self.mask(pf_pdgid)
        pxpy = torch.where(mask, pf_features[..., 0:2], torch.zeros((), dtype=pf_features.dtype))
        w = self.weights(pf_features, pf_charge, pf_pdgid, pf_frompv)
        w = w * mask.squeeze(-1).to(w.dtype)
        return -(w.unsqueeze(-1) * pxpy).sum(dim=1)


def build_deepmet() -> DeepMETModel:
    """DeepMET-like model with the :data:`~pysonic.models.specs.DEEPMET` inputs (untrained)."""
    return DeepMETModel()
