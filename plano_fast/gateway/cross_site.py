"""A web page's request is refused unless the gateway could have consented to it.

A browser sends some cross-origin requests without asking the server first (a CORS
"simple" request: POST with ``Content-Type`` ``text/plain``,
``application/x-www-form-urlencoded`` or ``multipart/form-data`` -- or none -- and no
custom header).  The page cannot read the answer, but the request is served: in config
mode a keyless request goes upstream with the gateway's ``access_key``, so any page the
operator's browser opens could spend on the operator's account (and a gateway on a
developer's loopback is reachable from every page).  A JSON request (``application/json``)
from another origin needs a preflight, which the gateway never answers (405): only a front
proxy that answers it on the gateway's behalf (a CORS deployment) lets one through.

So a POST the browser marks as coming from another site -- ``Sec-Fetch-Site:
cross-site`` or ``same-site`` (every current browser sends it), or, from a browser that
sends no ``Sec-Fetch-Site``, an ``Origin`` whose host and port are not the request's
``Host`` -- is a 403 unless its ``Content-Type`` is JSON, in every mode (a firewall or
managed credential cannot be put on a simple request, but a Gemini ``?key=`` can).  Same-
origin pages (an app and the gateway behind one proxy) and every non-browser client, which
sends neither header, are unaffected.  The compiled request parser declines a head with
either header (``wire/_request.pyx``), so this runs on httptools' path only
(``dispatch.dispatch_py``): nothing for a request without them.

A request carrying a header no page can send to another origin without a preflight -- a
credential (``Authorization: Bearer``, ``x-api-key``, ``x-goog-api-key``, ...) or an API's own
header (``anthropic-version``, ``openai-organization``, an SDK's ``x-stainless-*``) -- is
not a simple request whatever its ``Content-Type`` (Fetch: only ``Accept``,
``Accept-Language``, ``Content-Language``, ``Content-Type`` and ``Range`` are
CORS-safelisted): the browser asked first, and only a front proxy answering for the gateway
consented.  So a cross-origin multipart upload with its Bearer key is served.  Not every
non-safelisted name counts: a browser adds ``User-Agent``, ``Cache-Control``, ``Sec-*``,
``Cookie`` -- and a cached ``Authorization: Basic`` -- by itself, and a front proxy adds ``X-Forwarded-For``, ``Via``, trace headers
to a simple request as well; they prove nothing.  (A front proxy that adds a credential
to every request makes every request look consented to: its own CORS policy must hold.)

Not covered: DNS rebinding (a page whose own name is made to resolve to the gateway's
address is same-origin, its ``Host`` its own name), which only a ``Host`` allowlist stops.
"""

from __future__ import annotations

from collections.abc import Sequence

from plano_fast.errors import ClientError
from plano_fast.wire._head_py import CREDENTIALS, SUBSCRIPTION_KEYS

__all__ = ["CrossSiteRequest", "refuse_cross_site"]


#: request headers a page cannot send to another origin without a preflight, which no
#: browser or front proxy adds by itself: their presence proves the consent was asked for
_PREFLIGHTED = CREDENTIALS | SUBSCRIPTION_KEYS | frozenset(
    (b"anthropic-version", b"anthropic-beta", b"openai-organization", b"openai-project")
)


class CrossSiteRequest(ClientError):
    status = 403
    code = "cross_site_request"
    openai_type = "permission_error"


def refuse_cross_site(method: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """403 for a browser's cross-site simple POST the server never consented to (above);
    ``headers`` as parsed (lowercase names).  A page's GET or HEAD is let through: the
    data plane's are free (``/v1/models``) and the page cannot read the answer, while a CORS
    deployment's cross-origin GET (no Content-Type) must work; every other method needs a
    preflight."""
    if method != b"POST":
        return
    site = origin = host = content_type = None
    for name, value in headers:
        if name == b"sec-fetch-site":
            site = value.strip().lower()
        elif name == b"origin":
            origin = value.strip().lower()
        elif name == b"host":
            host = value.strip().lower()
        elif name == b"content-type":
            content_type = value
        elif name == b"authorization":
            # a Bearer only: a browser attaches a cached Basic (or Negotiate) credential to a
            # simple request by itself (HTTP authentication behind a front proxy)
            if value.lstrip()[:7].lower() == b"bearer ":
                return
        elif name in _PREFLIGHTED or name.startswith(b"x-stainless-"):
            return  # not a simple request: the browser ran a preflight (above)
    if site is not None:
        foreign = site in (b"cross-site", b"same-site")
    else:
        foreign = origin is not None and _authority(origin) != host
    if foreign and not _is_json(content_type):
        raise CrossSiteRequest(
            "a cross-site browser request without a JSON Content-Type is refused: a web page could send it "
            "without the gateway's consent; send Content-Type: application/json"
        )


def _authority(origin: bytes) -> bytes:
    """``Origin``'s host[:port] (``null`` and an opaque origin: itself, matching no Host).
    A default port is left out, as a browser's ``Host`` leaves it out."""
    scheme, sep, rest = origin.partition(b"://")
    if not sep:
        return origin
    default = b":443" if scheme == b"https" else b":80"
    return rest[: -len(default)] if rest.endswith(default) else rest


def _is_json(content_type: bytes | None) -> bool:
    """``application/json`` (or a ``+json`` type), parameters and case aside: a type a page
    cannot send to another origin without a preflight."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
