"""ParticleNet (Qu & Gouskos, PRD 101 (2020) 056019) with CMS-style particle + SV inputs.

Our own implementation, ONNX-friendly (no data-dependent Python control flow): EdgeConv blocks
over the k nearest neighbours (``topk`` on pairwise distances), the first block in (eta, phi), the
next ones in the learned feature space. Padded points are shifted far away so they are never
anyone's neighbour, and every feature map is multiplied by the mask, so a padded particle's
content cannot change the output. PF candidates and secondary vertices get their own feature
embedding and are then treated as one point cloud of 110 points (as CMS's ParticleNet does).

Full: k=16, channels (64,64,64), (128,128,128), (256,256,256), fc 256.
Lite: k=7, channels (32,32,32), (64,64,64), fc 128.

Example::

    model = build_particlenet(lite=True)
    probs = model(pf_points, pf_features, pf_mask, sv_points, sv_features, sv_mask)
"""

from __future__ import annotations

from pysonic.models._extras import require_torch

torch = require_torch()
nn = torch.nn

__all__ = ["ParticleNetTagger", "build_particlenet", "build_particlenet_lite"]


def _knn(points: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, P, k] of each point's k nearest other points (points: [N, C, P]).

    Ties are broken explicitly, because which of two equally distant points a runtime's top-k
    returns is unspecified: two points at the same place (e.g. a vertex and a particle along
    the same direction) would otherwise get different neighbours in ONNX Runtime and torch.
    A point is excluded from its own neighbours (not by dropping the first of k+1, which may be
    its twin), and the distance to point j is scaled by (1 + j 2^-20) and shifted by j 1e-30,
    so equal distances rank by index while distinct ones (beyond ~1e-4 relative) keep their
    order.
    """
    inner = -2 * torch.matmul(points.transpose(2, 1), points)
    sq = torch.sum(points * points, dim=1, keepdim=True)
    dist = -sq - inner - sq.transpose(2, 1)  # negative squared distance
    index = torch.arange(points.shape[-1], device=points.device)
    rank = index.to(dist.dtype).view(1, 1, -1)
    dist = dist * (1.0 + rank * 2.0**-20) - rank * 1e-30
    self_pair = index.unsqueeze(0) == index.unsqueeze(1)
    dist = torch.where(self_pair, torch.full_like(dist, -1e30), dist)
    return dist.topk(k=k, dim=-1)[1]


def _neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather neighbour features: x [N, C, P], idx [N, P, k] -> [N, C, P, k]."""
    n, c, p = x.shape
    k = idx.shape[-1]
    base = torch.arange(n, device=x.device).view(-1, 1, 1) * p
    flat = (idx + base).reshape(-1)
    x_t = x.transpose(2, 1).reshape(n * p, c)
    return x_t[flat, :].view(n, p, k, c).permute(0, 3, 1, 2)


class EdgeConv(nn.Module):
    def __init__(self, k: int, in_dim: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.k = k
        layers: list[nn.Module] = []
        dim = 2 * in_dim
        for ch in channels:
            layers += [nn.Conv2d(dim, ch, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
            dim = ch
        self.mlp = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv1d(in_dim, channels[-1], 1, bias=False), nn.BatchNorm1d(channels[-1])
        )
        self.act = nn.ReLU()

    def forward(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        idx = _knn(points, self.k)
        nbr = _neighbours(features, idx)
        centre = features.unsqueeze(-1).expand_as(nbr)
        edges = torch.cat([centre, nbr - centre], dim=1)
        out = self.mlp(edges).mean(dim=-1)
        return self.act(out + self.shortcut(features))


class ParticleNetTagger(nn.Module):
    """Inputs as CMS's ParticleNet; output softmax over :data:`pysonic.models.specs.JET_CLASSES`."""

    def __init__(
        self,
        *,
        pf_dims: int = 20,
        sv_dims: int = 11,
        num_classes: int = 5,
        k: int = 16,
        blocks: tuple[tuple[int, ...], ...] = ((64, 64, 64), (128, 128, 128), (256, 256, 256)),
        embed: int = 32,
        fc: int = 256,
    ) -> None:
        super().__init__()
        self.pf_embed = nn.Sequential(
            nn.BatchNorm1d(pf_dims),
            nn.Conv1d(pf_dims, embed, 1, bias=False),
            nn.BatchNorm1d(embed),
            nn.ReLU(),
        )
        self.sv_embed = nn.Sequential(
            nn.BatchNorm1d(sv_dims),
            nn.Conv1d(sv_dims, embed, 1, bias=False),
            nn.BatchNorm1d(embed),
            nn.ReLU(),
        )
        convs = []
        dim = embed
        for channels in blocks:
            convs.append(EdgeConv(k, dim, channels))
            dim = channels[-1]
        self.edge_convs = nn.ModuleList(convs)
        fused = sum(c[-1] for c in blocks)
        out = max(128, min(1024, (fused // 128) * 128))
        self.fusion = nn.Sequential(
            nn.Conv1d(fused, out, 1, bias=False), nn.BatchNorm1d(out), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Linear(out, fc), nn.ReLU(), nn.Dropout(0.1), nn.Linear(fc, num_classes)
        )

    def logits(
        self,
        pf_points: torch.Tensor,
        pf_features: torch.Tensor,
        pf_mask: torch.Tensor,
        sv_points: torch.Tensor,
        sv_features: torch.Tensor,
        sv_mask: torch.Tensor,
    ) -> torch.Tensor:
        mask = torch.cat([pf_mask, sv_mask], dim=2)
        mask = (mask != 0).to(pf_features.dtype)
        points = torch.cat([pf_points, sv_points], dim=2) * mask
        features = (
            torch.cat(
                [self.pf_embed(pf_features * pf_mask), self.sv_embed(sv_features * sv_mask)], dim=2
            )
            * mask
        )
        shift = (1.0 - mask) * 1e9  # padded points sit far from every real one
        outputs = []
        for i, conv in enumerate(self.edge_convs):
            pts = (points if i == 0 else features) + shift
            features = conv(pts, features) * mask
            outputs.append(features)
        fused = self.fusion(torch.cat(outputs, dim=1)) * mask
        counts = mask.sum(dim=-1).clamp(min=1.0)
        return self.head(fused.sum(dim=-1) / counts)

    def forward(
        self,
        pf_points: torch.Tensor,
        pf_features: torch.Tensor,
        pf_mask: torch.Tensor,
        sv_points: torch.Tensor,
        sv_features: torch.Tensor,
        sv_mask: torch.Tensor,
    ) -> torch.Tensor:
        return torch.softmax(
            self.logits(pf_points, pf_features, pf_mask, sv_points, sv_features, sv_mask), dim=-1
        )


def build_particlenet(*, lite: bool = False, num_classes: int = 5) -> ParticleNetTagger:
    """Full ParticleNet, or ParticleNet-Lite."""
    if lite:
        return ParticleNetTagger(
            k=7, blocks=((32, 32, 32), (64, 64, 64)), fc=128, num_classes=num_classes
        )
    return ParticleNetTagger(num_classes=num_classes)


def build_particlenet_lite(*, num_classes: int = 5) -> ParticleNetTagger:
    """ParticleNet-Lite (k=7; 32/64 EdgeConv channels)."""
    return build_particlenet(lite=True, num_classes=num_classes)
