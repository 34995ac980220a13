"""The admin API's pure parts: request bodies, exact money conversion, JSON views of rows.

No I/O here (the aiohttp layer is ``plano_fast.admin``), so everything is cheap to test.

Money never goes through a float: JSON bodies are parsed with ``parse_float=Decimal`` and
USD amounts (a decimal string such as ``"12.34"`` or a JSON number) become integer
nano-USD with ``decimal.Decimal`` at a precision where nothing can round; an amount finer
than 1 nano-USD is refused rather than rounded.
"""

from __future__ import annotations

import decimal
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from plano_fast.providers import PROVIDERS, canonical_provider_id
from plano_fast.store import (
    CustomPrice,
    Project,
    RegisteredApiKey,
    SpendingLimit,
    Store,
    UsageRow,
    UsageTotal,
    User,
    is_sha256_hex,
)

NANO_PER_USD: Final = 1_000_000_000
MAX_NANO_USD: Final = 2**63 - 1  # BIGINT: the largest amount either store can hold
_USD_TEXT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_USD_TEXT_CHARS: Final = 40


class RequestError(Exception):
    """A client error with its HTTP status; ``message`` never contains a secret."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.extra = extra  # more fields for the error body (never secrets)


async def resolve_project(store: Store, ref: str, field: str) -> Project:
    """The project ``ref`` names: its id, else the one project with that name.

    404 when nothing matches, 409 when several projects share the name (pass the id).
    The admin API and the CLI accept a project's id or name wherever they take one.
    """
    project = await store.get_project(ref)
    if project is not None:
        return project
    named = [p for p in await store.list_projects() if p.name == ref]
    if len(named) == 1:
        return named[0]
    where = f"field '{field}': " if field else ""
    if named:
        raise RequestError(
            409, "ambiguous_project", f"{where}several projects have this name; pass the id"
        )
    raise RequestError(404, "not_found", f"{where}no project has this id or name")


def hash_api_key(api_key: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 key: the only form in which a key is kept."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- money


def usd_to_nano(value: object) -> int:
    """An exact USD amount (decimal string, int or ``Decimal``) -> integer nano-USD.

    Raises ``ValueError`` (with a message fit for a 400) for floats, booleans, negative or
    non-finite values, amounts finer than 1 nano-USD and amounts too large to store.
    """
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or a number, not a boolean")
    if isinstance(value, float):
        raise ValueError("must be a decimal string (e.g. \"12.34\") or an exact JSON number")
    if isinstance(value, int):
        amount = decimal.Decimal(value)
    elif isinstance(value, decimal.Decimal):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_USD_TEXT_CHARS or _USD_TEXT.fullmatch(text) is None:
            raise ValueError("must be a non-negative decimal number such as \"12.34\"")
        amount = decimal.Decimal(text)
    else:
        raise ValueError("must be a decimal string (e.g. \"12.34\") or a number")
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if amount < 0:
        raise ValueError("must not be negative")
    with decimal.localcontext() as ctx:
        ctx.prec = 200
        ctx.Emax = 10_000
        ctx.Emin = -10_000
        if amount.adjusted() > 30:
            raise ValueError("is too large")
        nano = amount * NANO_PER_USD
        whole = nano.to_integral_value(rounding=decimal.ROUND_DOWN)
        if nano != whole:
            raise ValueError("has more than 9 decimal places (finer than 1 nano-USD)")
    result = int(whole)
    if result > MAX_NANO_USD:
        raise ValueError("is too large")
    return result


def nano_to_usd(nano: int) -> str:
    """Integer nano-USD -> exact decimal USD string: 12_340_000_000 -> "12.34", 1 -> "0.000000001"."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}." + f"{frac:09d}".rstrip("0")


def _nano_from_usd(value: object) -> object:
    return usd_to_nano(value)


def _check_nano(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_NANO_USD:
        raise ValueError("is too large")
    return value


# A USD amount in the body, held as integer nano-USD once validated.
UsdAsNano = Annotated[int, BeforeValidator(_nano_from_usd)]
NanoUsd = Annotated[int, Field(ge=0), BeforeValidator(_check_nano)]


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Parse a request body: floats become ``Decimal`` (no binary rounding, ever)."""
    if not raw.strip():
        raise RequestError(400, "invalid_request", "the request body must be a JSON object")
    try:
        data = json.loads(raw, parse_float=decimal.Decimal, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 JSON"
        raise RequestError(400, "invalid_request", f"the request body is not valid JSON ({detail})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "invalid_request", "the request body must be a JSON object")
    return data


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a valid amount")


def validation_message(exc: ValidationError) -> tuple[str, list[dict[str, str]]]:
    """A 400 message naming each bad field, e.g. "field 'provider': required".

    Built from ``errors(include_input=False)``: the offending values (which may be secrets,
    e.g. an api_key of the wrong shape) are never echoed.
    """
    details: list[dict[str, str]] = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        field = ".".join(str(part) for part in err["loc"])
        kind = err["type"]
        if kind == "missing":
            text = "required"
        elif kind == "extra_forbidden":
            text = "unknown field"
        else:
            text = str(err["msg"]).removeprefix("Value error, ")
        details.append({"field": field, "message": text})
    parts = [f"field '{d['field']}': {d['message']}" if d["field"] else d["message"] for d in details]
    return "; ".join(parts), details


# --------------------------------------------------------------------------- bodies

M = TypeVar("M", bound=BaseModel)

_Str200 = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_raw_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > 4096:
        raise ValueError("must be 1 to 4096 characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("must not contain whitespace or control characters")
    return value


def _check_key_hash(value: str | None) -> str | None:
    if value is not None and not is_sha256_hex(value):
        raise ValueError("must be a lowercase hex SHA-256 (64 characters)")
    return value


def _check_id(value: str | None) -> str | None:
    if value is not None and _ID_TEXT.fullmatch(value) is None:
        raise ValueError("must be 1 to 128 characters: letters, digits, '.', '_', ':' or '-'")
    return value


def check_upstream_url(value: str) -> str:
    """An http(s) base URL with a host; no credentials, query, fragment or control chars."""
    text = value.strip()
    if not text or len(text) > 2048:
        raise ValueError("must be an http or https URL")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain whitespace or control characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL (bad host or port)") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must use http or https")
    if not parts.hostname:
        raise ValueError("must include a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (they would be stored in clear text)")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment")
    return text


class _KeyRef(_Body):
    """Names a registered key by its raw value (hashed at once) or by its hash."""

    api_key: str | None = Field(default=None, repr=False)
    key_hash: str | None = None

    @field_validator("api_key")
    @classmethod
    def _raw(cls, value: str | None) -> str | None:
        return _check_raw_key(value)

    @field_validator("key_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        return _check_key_hash(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> _KeyRef:
        if (self.api_key is None) == (self.key_hash is None):
            raise ValueError("give exactly one of 'api_key' or 'key_hash'")
        return self

    def resolved_hash(self) -> str:
        """The key's hash; a raw ``api_key`` is hashed here and goes no further."""
        if self.api_key is not None:
            return hash_api_key(self.api_key)
        assert self.key_hash is not None
        return self.key_hash


class RegisterKeyBody(_KeyRef):
    provider: str
    upstream_url: str
    display_name: _Str200 | None = None
    project: _Str200 | None = None
    egress_ip: str | None = None

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        canonical = canonical_provider_id(value)
        if canonical is None:
            raise ValueError(f"unknown provider (expected one of {', '.join(sorted(PROVIDERS))})")
        return canonical

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_upstream_url(value)

    @field_validator("egress_ip")
    @classmethod
    def _egress(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError("must be a valid IPv4 or IPv6 address") from None


class KeyRefBody(_KeyRef):
    pass


class ProjectBody(_Body):
    name: _Str200
    id: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return _check_id(value)


class UserBody(_Body):
    name: _Str200
    email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    id: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return _check_id(value)


class LimitBody(_Body):
    scope_kind: Literal["project", "user", "key"]
    scope_id: Annotated[str, Field(min_length=1, max_length=128)]
    period: Literal["total", "monthly", "daily"]
    limit_usd: UsdAsNano | None = None
    limit_nano_usd: NanoUsd | None = None
    enforcement: Literal["soft", "hard"] = "soft"
    active: bool = True

    @model_validator(mode="after")
    def _one_amount(self) -> LimitBody:
        if (self.limit_usd is None) == (self.limit_nano_usd is None):
            raise ValueError("give exactly one of 'limit_usd' or 'limit_nano_usd'")
        if self.scope_kind == "key" and not is_sha256_hex(self.scope_id):
            raise ValueError("field 'scope_id': a key scope is the key's hash (64 lowercase hex)")
        return self

    @property
    def amount_nano_usd(self) -> int:
        amount = self.limit_nano_usd if self.limit_usd is None else self.limit_usd
        assert amount is not None  # checked by _one_amount
        return amount


class PriceBody(_Body):
    model: _Str200
    project_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    input_per_mtok_usd: UsdAsNano
    output_per_mtok_usd: UsdAsNano
    cache_read_per_mtok_usd: UsdAsNano = 0
    cache_write_per_mtok_usd: UsdAsNano = 0


def parse_body(model: type[M], data: Mapping[str, Any]) -> M:
    """Validate a parsed body; a 400 naming every bad field (values never echoed)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, details = validation_message(exc)
        raise RequestError(400, "invalid_request", message, details) from None


# --------------------------------------------------------------------------- JSON views


def project_view(p: Project) -> dict[str, Any]:
    return asdict(p)


def user_view(u: User) -> dict[str, Any]:
    return asdict(u)


def key_view(k: RegisteredApiKey) -> dict[str, Any]:
    """A registered key as JSON: the hash and routing data; there is no raw key to show."""
    return asdict(k)


def limit_view(limit: SpendingLimit) -> dict[str, Any]:
    view = asdict(limit)
    view["limit_usd"] = nano_to_usd(limit.limit_nano_usd)
    return view


def price_view(p: CustomPrice) -> dict[str, Any]:
    view = asdict(p)
    for part in ("input", "output", "cache_read", "cache_write"):
        view[f"{part}_per_mtok_usd"] = nano_to_usd(view[f"{part}_per_mtok_nano_usd"])
    return view


def usage_view(row: UsageRow) -> dict[str, Any]:
    view = asdict(row)
    view["cost_usd"] = None if row.cost_nano_usd is None else nano_to_usd(row.cost_nano_usd)
    return view


def total_view(t: UsageTotal, project_id: str | None) -> dict[str, Any]:
    view: dict[str, Any] = {"project_id": project_id}
    view.update(asdict(t))
    view["cost_usd"] = nano_to_usd(t.cost_nano_usd)
    return view
