"""Settings of the LLM twin generator: which OpenAI-compatible endpoint, model and limits.

The API key is a secret: it is kept out of ``repr``/``str`` (masked), out of
:meth:`LLMSettings.public_dict` (what goes into manifests) and out of every log line.

Sources, most specific first: explicit arguments, environment variables, then a secrets
mapping (``st.secrets`` contents or :func:`load_secrets_file`). Environment variables win over
the secrets file so that a one-off ``OPENAI_BASE_URL=... twinarm generate`` overrides a
deployed configuration.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_MODEL = "gpt-4o-mini"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
STRUCTURED_MODES = ("auto", "json_schema", "json_mode")

# Approximate list prices in USD per million tokens (input, output). Only an estimate for the
# run summary; set price_in_per_mtok / price_out_per_mtok to override. Unknown models and local
# endpoints cost 0 unless prices are set explicitly.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}

ENV_KEYS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TWINARM_LLM_MODEL")
# Optional tuning knobs (environment or secrets), name -> settings field.
_TUNING_KEYS = {
    "TWINARM_LLM_TEMPERATURE": "temperature",
    "TWINARM_LLM_TIMEOUT_S": "timeout_s",
    "TWINARM_LLM_MAX_RETRIES": "max_retries",
    "TWINARM_LLM_CONCURRENCY": "concurrency",
    "TWINARM_LLM_RPM": "requests_per_minute",
    "TWINARM_LLM_STRUCTURED": "structured",
    "TWINARM_LLM_MAX_TOKENS": "max_tokens",
}


class LLMConfigError(ValueError):
    """A configuration value is invalid; the message names it (never the key's value)."""


def is_local_endpoint(base_url: str | None) -> bool:
    """True when ``base_url`` points at this machine (localhost, 127.0.0.0/8, ::1).

    Host names are not resolved: a name that happens to resolve to 127.0.0.1 is treated as
    remote (the safe side). ``None`` means the OpenAI cloud: remote.
    """
    if not base_url:
        return False
    text = base_url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return False
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def redact_url(url: str | None) -> str | None:
    """The URL without user info, query or fragment (they may carry credentials)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.hostname and ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _mask(key: str | None) -> str:
    return "'***'" if key else "None"




def load_secrets_file(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read a Streamlit ``secrets.toml`` (default ``.streamlit/secrets.toml``).

    Returns a flat mapping of the keys this module knows, taken from the top level or from an
    ``[openai]`` table (top level wins). A missing file gives ``{}``; a malformed one raises
    :class:`LLMConfigError` naming the file.
    """
    p = Path(path) if path is not None else Path(".streamlit") / "secrets.toml"
    if not p.is_file():
        return {}
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LLMConfigError(f"cannot read secrets file {p}: {exc}") from None
    return flatten_secrets(data)


def flatten_secrets(secrets: Mapping[str, Any] | None) -> dict[str, Any]:
    """Known keys from a secrets mapping: top level, else under ``[openai]``.

    Also accepts lower-case short names under ``[openai]`` (``api_key``, ``base_url``,
    ``model``).
    """
    if not secrets:
        return {}
    known = set(ENV_KEYS) | set(_TUNING_KEYS)
    out: dict[str, Any] = {}
    section = secrets.get("openai") if hasattr(secrets, "get") else None
    if isinstance(section, Mapping) or hasattr(section, "keys"):
        short = {"api_key": "OPENAI_API_KEY", "base_url": "OPENAI_BASE_URL",
                 "model": "TWINARM_LLM_MODEL"}
        for k in section:
            name = short.get(str(k).lower(), str(k).upper())
            if name in known and section[k] not in (None, ""):
                out[name] = section[k]
    for k in secrets:
        name = str(k).upper()
        if name in known and secrets[k] not in (None, ""):
            out[name] = secrets[k]
    return out


@dataclass(frozen=True)
class LLMSettings:
    """Endpoint, model and limits of the LLM generator.

    ``max_retries``: extra attempts after an invalid reply (malformed JSON, values out of range)
    or a transport failure (timeout, connection error, HTTP 5xx). ``max_rate_limit_retries``:
    extra attempts after HTTP 429 (each waits for Retry-After, capped at
    ``max_retry_after_s``). ``structured``: ``auto`` asks for a strict JSON schema and falls back
    to JSON mode (then to plain prompting) when the endpoint rejects it.
    """

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str = DEFAULT_MODEL
    temperature: float | None = 0.7  # None: not sent (models that refuse it)
    timeout_s: float = 60.0
    max_retries: int = 2
    concurrency: int = 8
    requests_per_minute: float | None = None
    structured: str = "auto"
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    max_rate_limit_retries: int = 4
    max_retry_after_s: float = 60.0
    # upper bound of the tokens of one reply; None: derived from the request (about twice the
    # size of a complete reply, see services.generation.llm.schema.reply_token_budget)
    max_tokens: int | None = None
    # consecutive connection failures (no HTTP answer at all) after which the run stops
    max_connection_failures: int = 3

    def __post_init__(self) -> None:
        if self.structured not in STRUCTURED_MODES:
            raise LLMConfigError(
                f"structured must be one of {', '.join(STRUCTURED_MODES)}, got {self.structured!r}"
            )
        if not self.model:
            raise LLMConfigError("model name is empty")
        if self.timeout_s <= 0:
            raise LLMConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0 or self.max_rate_limit_retries < 0:
            raise LLMConfigError("retry counts must be >= 0")
        if self.concurrency < 1:
            raise LLMConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.requests_per_minute is not None and self.requests_per_minute <= 0:
            raise LLMConfigError(
                f"requests_per_minute must be > 0 or unset, got {self.requests_per_minute}"
            )
        if self.max_tokens is not None and self.max_tokens < 16:
            raise LLMConfigError(f"max_tokens must be >= 16 or unset, got {self.max_tokens}")
        if self.max_connection_failures < 1:
            raise LLMConfigError("max_connection_failures must be >= 1")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise LLMConfigError(f"temperature must be within [0, 2], got {self.temperature}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_env(
        cls,
        secrets: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> LLMSettings:
        """Settings from the environment, then ``secrets`` (e.g. ``dict(st.secrets)``).

        ``overrides`` (field=value) win over both. Values of ``None`` in overrides are ignored.
        """
        env = os.environ if environ is None else environ
        sec = flatten_secrets(secrets)

        def pick(name: str) -> Any:
            v = env.get(name)
            if v not in (None, ""):
                return v
            return sec.get(name)

        values: dict[str, Any] = {
            "api_key": _str_or_none(pick("OPENAI_API_KEY")),
            "base_url": _str_or_none(pick("OPENAI_BASE_URL")),
            "model": _str_or_none(pick("TWINARM_LLM_MODEL")) or DEFAULT_MODEL,
        }
        for name, fname in _TUNING_KEYS.items():
            raw = pick(name)
            if raw is None:
                continue
            values[fname] = _coerce(fname, raw, name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> LLMSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    # -- derived ------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """An endpoint is configured: an API key (OpenAI cloud) or an explicit base URL."""
        return bool(self.api_key) or bool(self.base_url)

    @property
    def effective_base_url(self) -> str:
        return (self.base_url or OPENAI_DEFAULT_BASE_URL).rstrip("/")

    @property
    def is_local(self) -> bool:
        return is_local_endpoint(self.base_url)

    @property
    def is_openai_cloud(self) -> bool:
        """The OpenAI (or Azure OpenAI) service, whose API has moved to
        ``max_completion_tokens``; every other OpenAI-compatible server knows ``max_tokens``."""
        if not self.base_url:
            return True
        host = (urlsplit(self.base_url if "://" in self.base_url else "http://" + self.base_url)
                .hostname or "").lower()
        return host == "api.openai.com" or host.endswith(".openai.azure.com")

    def prices(self) -> tuple[float, float]:
        """(input, output) USD per million tokens used for the cost estimate."""
        if self.price_in_per_mtok is not None or self.price_out_per_mtok is not None:
            return (self.price_in_per_mtok or 0.0, self.price_out_per_mtok or 0.0)
        if self.is_local:
            return (0.0, 0.0)
        name = self.model.lower()
        if name in PRICES_PER_MTOK:
            return PRICES_PER_MTOK[name]
        # dated snapshots, e.g. gpt-4o-mini-2024-07-18: longest known prefix
        for known in sorted(PRICES_PER_MTOK, key=len, reverse=True):
            if name.startswith(known + "-"):
                return PRICES_PER_MTOK[known]
        return (0.0, 0.0)

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        p_in, p_out = self.prices()
        return (input_tokens * p_in + output_tokens * p_out) / 1_000_000

    def public_dict(self) -> dict[str, Any]:
        """Settings for manifests and logs: everything except the API key."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "api_key":
                continue
            out[f.name] = getattr(self, f.name)
        out["base_url"] = redact_url(self.base_url)
        out["api_key_set"] = bool(self.api_key)
        out["local_endpoint"] = self.is_local
        return out

    def __repr__(self) -> str:
        body = ", ".join(
            f"{k}={v!r}" for k, v in self.public_dict().items()
            if k not in ("api_key_set", "local_endpoint")
        )
        return f"LLMSettings(api_key={_mask(self.api_key)}, {body})"

    __str__ = __repr__


def _str_or_none(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _coerce(fname: str, raw: Any, source: str) -> Any:
    try:
        if fname in ("temperature", "timeout_s", "requests_per_minute"):
            return float(raw)
        if fname in ("max_retries", "concurrency", "max_tokens"):
            return int(raw)
        return str(raw).strip().lower()
    except (TypeError, ValueError):
        raise LLMConfigError(f"{source}: expected a number, got {raw!r}") from None
