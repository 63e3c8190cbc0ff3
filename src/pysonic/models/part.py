"""Particle Transformer (Qu, Li & Qian, ICML 2022, arXiv:2202.03772) with CMS-style PF + SV inputs.

Our own implementation, written so that the TorchScript ONNX exporter (opset 17, dynamic batch)
produces a plain graph: attention is spelled out as matmul + softmax, there is no data-dependent
Python control flow, and every shape except the batch axis is fixed by the spec.

Why this module is careful about padding: jets are zero-padded to 100 PF candidates and 10
secondary vertices. The pairwise interaction features (ln ΔR, ln kT, ln z, ln m²) of a zero
four-vector need log(0), sqrt(0), 0/0 and atan2(0, 0); a naive implementation gives -inf/NaN
there, and because ``0 * NaN = NaN`` a single NaN in a padded *pair* poisons the whole jet through
the attention matmul, in ONNX Runtime as much as in torch. Therefore:

* inputs are replaced by zero at padded positions with ``torch.where`` (not ``* mask``: junk or NaN
  in the padding can then never leak in);
* every log/sqrt/division gets a clamped argument and atan2/sqrt at the origin use the
  "double where" trick (substitute a harmless argument first, select the result after), so the
  forward pass *and* the gradients are finite for zero or identical four-vectors;
* masked attention logits are set to a large finite negative value (never -inf), so a row whose
  keys are all masked yields a uniform softmax instead of NaN;
* the interaction bias is zeroed for pairs with a padded member (and on the diagonal).

Architecture (the paper's standard size): per-collection particle embedding MLP (128, 512, 128)
with LayerNorm/GELU; pair embedding (64, 64, 64) -> one bias per head (8 heads); 8 particle
attention blocks (pre-LN, interaction bias, FFN 512); 2 class-attention blocks with a learned class
token; LayerNorm + Linear to the 5 :data:`pysonic.models.specs.JET_CLASSES`.

Example::

    model = build_part()
    probs = model(pf_features, pf_vectors, pf_mask, sv_features, sv_vectors, sv_mask)
"""

from __future__ import annotations

import math

from pysonic.models._extras import require_torch

torch = require_torch()
nn = torch.nn

__all__ = ["EPS", "MASKED_LOGIT", "ParticleTransformerTagger", "build_part", "pair_features"]

#: Floor for the arguments of log/sqrt/division in the pair features.
EPS = 1e-8
#: Attention logit of a masked key: large and finite (``-inf`` turns fully masked rows into NaN).
MASKED_LOGIT = -1e9


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with value 0 and gradient 0 at x <= 0 (a plain sqrt has an infinite gradient at 0)."""
    ok = x > 0
    return torch.where(ok, torch.sqrt(torch.where(ok, x, torch.ones_like(x))), torch.zeros_like(x))


def _safe_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 that is 0 with gradient 0 at the origin, where the textbook gradient is 0/0.

    (Recent torch already returns a zero gradient there; the guard keeps us independent of that.)
    """
    ok = (x * x + y * y) > 0
    angle = torch.atan2(
        torch.where(ok, y, torch.zeros_like(y)), torch.where(ok, x, torch.ones_like(x))
    )
    return torch.where(ok, angle, torch.zeros_like(angle))


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp(min=EPS))


def pair_features(vectors: torch.Tensor) -> torch.Tensor:
    """Interaction features [N, 4, P, P] (ln ΔR, ln kT, ln z, ln m²) from four-vectors [N, 4, P].

    Finite (values and gradients) for any finite input, including all-zero (padded) and
    identical four-vectors: degenerate arguments are floored at :data:`EPS` before the log.
    Padded pairs still get (finite, meaningless) values; the model masks them.
    """
    px, py, pz, energy = vectors.unbind(dim=1)  # each [N, P]
    pt = _safe_sqrt(px * px + py * py)
    rapidity = 0.5 * (_log(energy + pz) - _log(energy - pz))
    phi = _safe_atan2(py, px)

    def pairs(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return v.unsqueeze(2), v.unsqueeze(1)  # [N, P, 1] (i) and [N, 1, P] (j)

    (pt_i, pt_j), (y_i, y_j), (phi_i, phi_j) = pairs(pt), pairs(rapidity), pairs(phi)
    dphi = phi_i - phi_j
    dphi = dphi - 2 * math.pi * torch.floor((dphi + math.pi) / (2 * math.pi))  # into [-pi, pi)
    delta = _safe_sqrt((y_i - y_j) ** 2 + dphi**2)
    pt_min = torch.minimum(pt_i, pt_j)
    sum_p = [c.unsqueeze(2) + c.unsqueeze(1) for c in (px, py, pz, energy)]
    m2 = sum_p[3] ** 2 - sum_p[0] ** 2 - sum_p[1] ** 2 - sum_p[2] ** 2
    ln_delta = _log(delta)
    ln_kt = _log(pt_min * delta)
    ln_z = _log(pt_min / (pt_i + pt_j).clamp(min=EPS))
    ln_m2 = _log(m2)
    return torch.stack([ln_delta, ln_kt, ln_z, ln_m2], dim=1)


class _ParticleEmbed(nn.Module):
    """Per-particle MLP: [N, C, P] -> [N, P, D]."""

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        layers: list[nn.Module] = []
        dim = in_dim
        for out in dims:
            layers += [nn.LayerNorm(dim), nn.Linear(dim, out), nn.GELU()]
            dim = out
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x).transpose(1, 2))


class _PairEmbed(nn.Module):
    """Per-pair MLP -> one attention bias per head, evaluated on the i < j pairs only.

    The four features are symmetric in (i, j), so the MLP runs on the P(P-1)/2 upper-triangle
    pairs (half the cost of the dominant part of the model) in channels-last layout (Linear is
    several times faster than a 1x1 Conv in torch), and the result is gathered back into a
    symmetric [N, H, P, P] matrix with a constant index (the diagonal is masked by the caller).
    """

    def __init__(self, particles: int, dims: tuple[int, ...], heads: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(4)]
        dim = 4
        for out in dims:
            layers += [nn.Linear(dim, out), nn.BatchNorm1d(out), nn.GELU()]
            dim = out
        layers.append(nn.Linear(dim, heads))
        self.net = nn.Sequential(*layers)
        self.particles = particles
        rows, cols = torch.triu_indices(particles, particles, offset=1)
        # flat (i * P + j) positions of the i < j pairs, and for every (i, j) its pair's slot
        self.register_buffer("upper", rows * particles + cols, persistent=False)
        slot = torch.zeros(particles, particles, dtype=torch.long)
        slot[rows, cols] = torch.arange(rows.numel())
        self.register_buffer("slot", (slot + slot.T).reshape(-1), persistent=False)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """pairs [N, 4, P, P] -> bias [N, H, P, P]."""
        n = pairs.shape[0]
        upper = pairs.flatten(2).index_select(2, self.upper)  # [N, 4, L]
        bias = self.net(upper.transpose(1, 2).reshape(-1, 4))  # [N * L, H]
        bias = bias.reshape(n, -1, bias.shape[-1]).transpose(1, 2)  # [N, H, L]
        full = bias.index_select(2, self.slot)  # [N, H, P * P]
        return full.reshape(n, -1, self.particles, self.particles)


class _Attention(nn.Module):
    """Multi-head attention as plain matmuls, with an optional additive bias per head."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)  # [N, H, L, dh]

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        key_mask: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        q = self._split(self.q(query))
        k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))
        logits = torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5)
        if bias is not None:
            logits = logits + bias
        logits = logits.masked_fill(~key_mask, MASKED_LOGIT)  # key_mask: [N, 1, 1, K]
        weights = self.drop(torch.softmax(logits, dim=-1))
        out = torch.matmul(weights, v).transpose(1, 2)
        return self.proj(out.reshape(out.shape[0], out.shape[1], -1))


class _Block(nn.Module):
    """Pre-LN transformer block (NormFormer-style extra norms, as in ParT)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, dropout)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ffn_in = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(ffn),
            nn.Linear(ffn, dim),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        key_mask: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Update ``query`` [N, Q, D] by attending to ``context`` [N, K, D]."""
        h = self.attn(self.norm_in(query), self.norm_in(context), key_mask, bias)
        x = query + self.drop(self.norm_attn(h))
        return x + self.drop(self.ffn(self.norm_ffn_in(x)))


class ParticleTransformerTagger(nn.Module):
    """ParT on PF candidates + SVs; output softmax over :data:`pysonic.models.specs.JET_CLASSES`.

    ``particles`` is the padded sequence length (PF + SV slots: 100 + 10 in
    :data:`pysonic.models.specs.PART`), fixed because the pair embedding gathers through a constant
    triangle index.
    """

    def __init__(
        self,
        *,
        pf_dims: int = 20,
        sv_dims: int = 11,
        particles: int = 110,
        num_classes: int = 5,
        embed: tuple[int, ...] = (128, 512, 128),
        pair_embed: tuple[int, ...] = (64, 64, 64),
        heads: int = 8,
        blocks: int = 8,
        class_blocks: int = 2,
        ffn: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        dim = embed[-1]
        self.pf_embed = _ParticleEmbed(pf_dims, embed)
        self.sv_embed = _ParticleEmbed(sv_dims, embed)
        self.pair_embed = _PairEmbed(particles, pair_embed, heads)
        self.blocks = nn.ModuleList(_Block(dim, heads, ffn, dropout) for _ in range(blocks))
        self.class_blocks = nn.ModuleList(_Block(dim, heads, ffn, 0.0) for _ in range(class_blocks))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def logits(
        self,
        pf_features: torch.Tensor,
        pf_vectors: torch.Tensor,
        pf_mask: torch.Tensor,
        sv_features: torch.Tensor,
        sv_vectors: torch.Tensor,
        sv_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits [N, classes] (training uses these with cross-entropy)."""
        pf_m, sv_m = pf_mask != 0, sv_mask != 0  # [N, 1, P]
        mask = torch.cat([pf_m, sv_m], dim=2)
        zero = torch.zeros((), dtype=pf_features.dtype)
        x = torch.cat(
            [
                self.pf_embed(torch.where(pf_m, pf_features, zero)),
                self.sv_embed(torch.where(sv_m, sv_features, zero)),
            ],
            dim=1,
        )  # [N, P, D]
        x = torch.where(mask.transpose(1, 2), x, zero)
        vectors = torch.where(mask, torch.cat([pf_vectors, sv_vectors], dim=2), zero)
        index = torch.arange(vectors.shape[2], device=vectors.device)  # (ORT: no bool EyeLike)
        off_diag = index.unsqueeze(1) != index.unsqueeze(0)
        pair_mask = (mask.transpose(1, 2) & mask & off_diag).unsqueeze(1)  # [N, 1, P, P]
        pairs = torch.where(pair_mask, pair_features(vectors), zero)
        bias = torch.where(pair_mask, self.pair_embed(pairs), zero)  # [N, H, P, P]
        key_mask = mask.unsqueeze(1)  # [N, 1, 1, P]
        for block in self.blocks:
            x = block(x, x, key_mask, bias)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        class_mask = torch.cat([torch.ones_like(key_mask[..., :1]), key_mask], dim=-1)
        for block in self.class_blocks:
            cls = block(cls, torch.cat([cls, x], dim=1), class_mask)
        return self.head(self.norm(cls[:, 0]))

    def forward(
        self,
        pf_features: torch.Tensor,
        pf_vectors: torch.Tensor,
        pf_mask: torch.Tensor,
        sv_features: torch.Tensor,
        sv_vectors: torch.Tensor,
        sv_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Softmax probabilities [N, classes]."""
        return torch.softmax(
            self.logits(pf_features, pf_vectors, pf_mask, sv_features, sv_vectors, sv_mask),
            dim=-1,
        )


def build_part(*, num_classes: int = 5) -> ParticleTransformerTagger:
    """The paper's standard ParT (8 + 2 blocks, 128 wide, 8 heads)."""
    return ParticleTransformerTagger(num_classes=num_classes)
