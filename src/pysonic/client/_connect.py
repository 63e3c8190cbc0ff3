"""Build a ready client from a site: balanced servers, retries, local fallback, metrics.

Example::

    client = connect(SonicConfig("particlenet", allowed_tries=3))   # site from the environment
"""

from __future__ import annotations

from pysonic.client._balancer import Balanced, Policy
from pysonic.client._client import SonicClient, SonicConfig
from pysonic.client._fallback import LocalFallback
from pysonic.client._metrics import ClientMetrics
from pysonic.client._retry import Retrying, RetryPolicy
from pysonic.client._site import SiteConfig
from pysonic.client._transport import AsyncTransport, GrpcTransport
from pysonic.errors import UnavailableError

__all__ = ["build_transport", "connect"]


def build_transport(
    config: SonicConfig,
    site: SiteConfig,
    *,
    metrics: ClientMetrics | None = None,
    policy: Policy = "least_loaded",
) -> AsyncTransport:
    """Retrying(Balanced(servers), fallback=LocalFallback) as the site allows."""
    fallback = None
    if site.allow_local_fallback and site.fallback_model_repository is not None:
        fallback = LocalFallback(site.fallback_model_repository)
    if not site.servers:
        if fallback is None:
            msg = (
                "no servers in the site configuration (set PYSONIC_SITE_CONFIG or "
                "PYSONIC_SERVERS) and no local fallback allowed"
            )
            raise UnavailableError(msg)
        return Retrying(fallback, RetryPolicy(allowed_tries=1), metrics=metrics)
    servers = [
        GrpcTransport(s.url, compression=config.compression, tls=s.tls, token=s.token)
        for s in site.servers
    ]
    balanced = Balanced(
        servers,
        policy=policy,
        preferred=config.preferred_server,
        saturation_queue_ms=site.saturation_queue_ms,
        probe_interval_s=site.probe_interval_s,
        eject_base_s=site.eject_base_s,
        eject_max_s=site.eject_max_s,
        metrics=metrics,
    )
    return Retrying(
        balanced,
        RetryPolicy(allowed_tries=max(config.allowed_tries, 1)),
        fallback=fallback,
        metrics=metrics,
    )


def connect(
    config: SonicConfig, site: SiteConfig | None = None, *, metrics: ClientMetrics | None = None
) -> SonicClient:
    """A :class:`SonicClient` over the site's servers (``SiteConfig.from_env()`` by default)."""
    site = site or SiteConfig.from_env()
    return SonicClient(config, build_transport(config, site, metrics=metrics))
