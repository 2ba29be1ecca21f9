"""The proxy the environment names for a URL, read as curl and boto3 read it.

``HTTPS_PROXY``/``HTTP_PROXY`` (lower case first), then ``ALL_PROXY``; ``NO_PROXY`` hosts
and loopback ones (the emulator's) are reached directly. A value without a scheme
(``user:pass@proxy:3128``) is an http proxy, as curl and botocore take it. aiohttp tunnels
only through an http proxy, so another scheme is refused rather than silently bypassed.
The value is never shown: it may hold the proxy's password.
"""

from __future__ import annotations

import urllib.request

from yarl import URL

from batch.errors import UsageError
from batch.urls import is_loopback


def proxy_for(url: str) -> URL | None:
    """The proxy to reach ``url`` through, credentials in it, or None.

    Raises:
        UsageError: the variable that applies holds no usable http proxy URL.
    """
    target = URL(url)
    host = target.host
    if not host or is_loopback(host) or urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies_environment()
    named = target.scheme if target.scheme in proxies else "all"
    raw = proxies.get(named)
    if not raw:
        return None
    return _parsed(raw, f"{named.upper()}_PROXY")


def refused_by(proxy: URL, reason: str) -> str:
    """What a request the proxy would not pass on is said as (nothing reached Deepgram)."""
    return f"the proxy {proxy.host}:{proxy.port} did not pass the request on ({reason})"


def _parsed(raw: str, variable: str) -> URL:
    """The proxy URL ``variable`` holds (``raw``: never shown)."""
    try:
        proxy = URL(raw if "://" in raw else f"http://{raw}")
        proxy.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        msg = (
            f"{variable}: not a proxy URL (expected http://host:port, with user:password@ "
            "before the host if it needs them)"
        )
        raise UsageError(msg) from None
    if proxy.scheme != "http" or not proxy.host:
        msg = (
            f"{variable}: only an http:// proxy is supported (an https:// URL still goes "
            "through it encrypted, in a tunnel)"
        )
        raise UsageError(msg)
    return proxy
