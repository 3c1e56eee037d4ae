"""Remote media downloads that cannot be turned against the server's own network (SSRF).

Every hop (the URL and each redirect) is resolved with DNS first; if any address of the host is loopback, private,
link-local, multicast, reserved or otherwise not global, the download is refused (unless the address lies in a
network the operator trusts with --allowed-media-network). The connection then goes to the checked address itself,
so a second DNS answer cannot swap it (no DNS rebinding). Redirects are followed by hand (at most 5), and the
whole download shares one deadline and one byte cap.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from .errors import APIError

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


def _short(url: str) -> str:
    return url if len(url) <= 100 else url[:97] + "..."


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted=()) -> str | None:
    """Why `ip` may not be fetched from ('a loopback address', ...), or None when it may."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in trusted if net.version == ip.version):
        return None
    for test, what in (("is_loopback", "a loopback"), ("is_link_local", "a link-local"),
                       ("is_private", "a private"), ("is_multicast", "a multicast"),
                       ("is_unspecified", "an unspecified"), ("is_reserved", "a reserved")):
        if getattr(ip, test):
            return f"{what} address"
    if not ip.is_global:
        return "a non-public address"
    return None


def resolve_public(host: str, port: int, trusted=()) -> str:
    """The address to connect to for host:port, after checking every address DNS gives for it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise APIError(400, f"cannot resolve media host {host!r} ({e}); check the URL", code="media_fetch_failed")
    addrs = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        why = address_problem(ip, trusted)
        if why is not None:
            raise APIError(403, f"media host {host!r} resolves to {ip}, {why}; the server only fetches media from "
                                "public addresses (operators can trust a network with --allowed-media-network)",
                           code="media_address_forbidden")
        addrs.append(str(ip))
    if not addrs:
        raise APIError(400, f"media host {host!r} has no address", code="media_fetch_failed")
    return addrs[0]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, ip, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch(url: str, *, timeout: float, max_bytes: int, trusted=(), what: str = "image") -> bytes:
    """GET `url` (http/https) with the checks above; raises APIError (400/403/413/504) naming the URL."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise APIError(400, f"{what} URL {_short(url)!r} must be http(s)://host/...", code="invalid_media_url")
        if parts.username or parts.password:
            raise APIError(400, f"{what} URL {_short(url)!r} carries credentials; remove user:password@",
                           code="invalid_media_url")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise APIError(400, f"{what} URL {_short(url)!r} has an invalid port", code="invalid_media_url") from None
        ip = resolve_public(parts.hostname, port, trusted)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = cls(parts.hostname, port, ip, left)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": "qwenvl-server", "Accept": "*/*"})
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                loc = resp.getheader("Location")
                if not loc:
                    raise APIError(400, f"{what} URL {_short(url)!r} redirected without a Location",
                                   code="media_fetch_failed")
                url = urljoin(url, loc)
                continue
            if resp.status != 200:
                raise APIError(400, f"fetching {what} {_short(url)!r} failed: HTTP {resp.status}",
                               code="media_fetch_failed")
            declared = resp.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _too_big(what, url, max_bytes)
            return _read_capped(resp, max_bytes, deadline, what, url)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                break
            raise APIError(400, f"fetching {what} {_short(url)!r} failed ({e})", code="media_fetch_failed") from None
        finally:
            conn.close()
    else:
        raise APIError(400, f"{what} URL {_short(url)!r}: more than {MAX_REDIRECTS} redirects",
                       code="media_fetch_failed")
    raise APIError(400, f"fetching {what} {_short(url)!r} took longer than {timeout:g} s; use a faster host or "
                        "send the data inline as a data: URL", code="media_fetch_timeout")


def _too_big(what, url, cap) -> APIError:
    return APIError(413, f"{what} at {_short(url)!r} is larger than the server's {cap} byte limit",
                    code="media_too_large")


def _read_capped(resp, max_bytes: int, deadline: float, what: str, url: str) -> bytes:
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise _too_big(what, url, max_bytes)
        chunks.append(chunk)
