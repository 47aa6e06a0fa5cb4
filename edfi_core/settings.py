"""The settings tap-edfi and target-edfi share, and the API client made from them.

Where the API is (its root, a year, instance, tenant or context segment, URL overrides), who the client is, and
how requests are retried: declared once here so that the two plugins accept, document and apply them alike.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.metrics import get_metrics_logger

from edfi_core.session import USER_AGENT, EdFiClient
from edfi_core.token_cache import open_token_cache


def api_properties(*extra_urls: th.Property) -> list[th.Property]:
    """Where the API is and who the client is; ``extra_urls`` are a plugin's own URL overrides."""
    return [
        th.Property("base_url", th.StringType, required=True, title="API root URL",
                    description="The Ed-Fi API root, whose GET answers the discovery payload with `urls` "
                                "(e.g. `https://host/v7.3/api`, or `https://host/api/{tenant}/{context}`)."),
        th.Property("client_id", th.StringType, required=True, title="Client ID",
                    description="OAuth client id (key) of the API client."),
        th.Property("client_secret", th.StringType, required=True, secret=True, title="Client secret",
                    description="OAuth client secret of the API client."),
        th.Property("school_year", th.IntegerType,
                    description="5.x/6.x year-specific deployments: the school year segment of the URLs (the root "
                                "payload shows the current calendar year). 7.x: fills a school-year context "
                                "placeholder."),
        th.Property("instance", th.StringType,
                    description="5.x/6.x instance-year-specific deployments: the instance segment."),
        th.Property("tenant", th.StringType,
                    description="7.x multi-tenant deployments: the tenant route segment, when base_url does not "
                                "include it."),
        th.Property("context", th.StringType,
                    description="7.x context-routed deployments: the context route segment (e.g. a school year), "
                                "when base_url does not include it."),
        th.Property("data_url", th.StringType,
                    description="Override: the data management API URL (`.../data/v3`)."),
        th.Property("oauth_url", th.StringType, description="Override: the OAuth token URL."),
        th.Property("metadata_url", th.StringType, description="Override: the OpenAPI metadata listing URL."),
        *extra_urls,
        th.Property("scope", th.StringType,
                    description="OAuth scope: an education organization id the client is associated with."),
        th.Property("token_cache", th.StringType, secret=True,  # a postgresql:// URL may hold a password
                    description="Where bearer tokens are shared between runs and processes (ODS/API 7.3 allows 15 "
                                "live tokens per client): a file path (default "
                                "`~/.cache/edfi-singer/oauth-tokens.json`, or `$EDFI_SINGER_TOKEN_CACHE`), a "
                                "`postgresql://` URL for runs on many hosts (table `edfi_singer_oauth_tokens`), or "
                                "`off`. Tokens are kept by OAuth URL and client id, renewed a minute before they "
                                "expire, and never logged."),
        th.Property("allowed_origins", th.ArrayType(th.StringType),
                    description="Origins (`https://host[:port]`) besides base_url's and those of explicit URL "
                                "settings that may receive the client's credentials and tokens, for an API whose "
                                "root payload or metadata names another host (e.g. a separate OAuth server). A "
                                "request with credentials to any other origin is refused; with an https base_url, "
                                "`http://` URLs of the same host are used as https."),
        th.Property("ca_bundle", th.StringType,
                    description="A PEM file of the CA certificates to trust (e.g. a private CA). Default: "
                                "`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` or `SSL_CERT_FILE` when set, else the "
                                "certifi bundle. Ignored when verify_ssl is false."),
    ]


def retry_properties(request_timeout: float) -> list[th.Property]:
    """How one request is retried and how long it may take."""
    return [
        th.Property("max_tries", th.IntegerType(minimum=1), default=8,
                    description="Tries of one request on 429, 5xx, timeouts and dropped connections."),
        th.Property("request_timeout", th.NumberType, default=request_timeout,
                    description="Deadline in seconds of one try of a request, from connecting to the last byte of "
                                "the response; a slower try is abandoned (and retried up to max_tries)."),
        th.Property("connect_timeout", th.NumberType, default=10,
                    description="Seconds to wait for a TCP (and TLS) connection to the API or the proxy."),
        th.Property("max_backoff_seconds", th.NumberType, default=30,
                    description="Longest wait between two tries (a server's Retry-After may ask for more)."),
    ]


METRICS_LOG_LEVEL = th.Property(
    "metrics_log_level", th.StringType, allowed_values=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info",
                                                        "warning", "error"],
    description="Level of the `singer_sdk.metrics` logger that writes the SDK's METRIC lines (logged at INFO): "
                "`WARNING` or `ERROR` turns them off. Default: the plugin's log level (`LOGLEVEL`).")

VERIFY_SSL = th.Property("verify_ssl", th.BooleanType, default=True,
                         description="Verify TLS certificates. False turns verification off for every request (a CA "
                                     "bundle in the environment does not turn it back on), with one warning.")


def defaults_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting's default in a plugin's config schema (``PropertiesList.to_dict()``)."""
    return {name: prop["default"] for name, prop in (schema.get("properties") or {}).items() if "default" in prop}


def with_defaults(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A run's settings: the config's values, the defaults where a setting is absent or null."""
    return {**defaults, **{k: v for k, v in config.items() if v is not None}}


# -- config validation without secrets -----------------------------------------------------------------------
#: ``scheme://user:password@`` in a URL setting (a PostgreSQL transaction log or token cache)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@/\s]+@")
HIDDEN = "<secret>"


def secret_settings(schema: Mapping[str, Any]) -> set[str]:
    """Settings the schema marks secret (``secret``/``writeOnly`` from ``th.Property(secret=True)``, or
    ``sensitive``)."""
    return {name for name, prop in (schema.get("properties") or {}).items()
            if isinstance(prop, dict) and (prop.get("secret") or prop.get("writeOnly") or prop.get("sensitive"))}


def _problem(error: Any) -> str:
    """What is wrong with a value, without the value."""
    rule, expected = error.validator, error.validator_value
    if rule == "type":
        types = expected if isinstance(expected, list) else [expected]
        return f"a value that is not of type {' or '.join(repr(t) for t in types)}"
    if rule == "enum":
        return f"a value that is not one of {expected!r}"
    if rule in ("minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems"):
        return f"a value that breaks {rule} {expected!r}"
    return f"a value that fails {rule!r}"


def _texts(value: Any, out: set[str]) -> None:
    """A value as text, and every string or number inside it."""
    if value is None:
        return
    out.add(str(value))
    if isinstance(value, dict):
        for item in value.values():
            _texts(item, out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _texts(item, out)


def config_errors(schema: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The config's validation errors as the SDK words them (``<problem> in config['name']``), with the value of
    every secret setting left out (a mistyped secret is still a secret) and passwords in URLs hidden."""
    from singer_sdk.plugin_base import JSONSchemaValidator  # the SDK's validator: it fills in defaults too

    secrets = secret_settings(schema)
    found: set[str] = set()
    for name in secrets:
        _texts(config.get(name), found)
    values = sorted((v for v in found if len(v) >= 3), key=len, reverse=True)
    out = []
    for error in JSONSchemaValidator(schema).iter_errors(config):
        path = list(error.path)
        message = error.message
        if path and path[0] in secrets:
            message = f"{_problem(error)} (secret setting: value not shown)"
        for value in values:
            message = message.replace(value, HIDDEN)
        message = _URL_PASSWORD.sub(rf"\1{HIDDEN}@", message)
        if path:
            message += f" in config[{']['.join(repr(p) for p in path)}]"
        out.append(message)
    return out


def unknown_settings(schema: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """One warning text per config key the plugin does not know (``resource`` for ``resources``), naming the
    closest setting; never a value."""
    known = sorted((schema.get("properties") or {}).keys())
    out = []
    for key in sorted(str(k) for k in config):
        if key in known or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f": did you mean '{close[0]}'?" if close else " (see --about for the settings)"
        out.append(f"unknown setting '{key}' is ignored{hint}")
    return out


def validate_config(plugin: Any, *, raise_errors: bool = True) -> list[str]:
    """``PluginBase._validate_config`` with :func:`config_errors`: the SDK prints every error it raises. Also warns
    of every unknown setting (with the closest known one) and applies ``metrics_log_level``."""
    schema = plugin.config_jsonschema
    plugin.append_builtin_config(schema)
    for text in unknown_settings(schema, plugin._config):
        plugin.logger.warning("%s", text)
    level = plugin._config.get("metrics_log_level")
    if isinstance(level, str) and level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"):
        get_metrics_logger().setLevel(level.upper())
    errors = config_errors(schema, plugin._config)
    if errors:
        if raise_errors:
            raise ConfigValidationError("Config validation failed", errors=errors, schema=schema)
        plugin.logger.warning("Config validation failed")
    return errors


def make_client(s: Mapping[str, Any], *, url_overrides: Mapping[str, str | None] | None = None,
                user_agent: str | None = None) -> EdFiClient:
    """The API client for a plugin's settings (defaults applied)."""
    return EdFiClient(
        s["base_url"], s.get("client_id") or "", s.get("client_secret") or "",
        max_workers=int(s["max_workers"]), timeout=float(s["request_timeout"]),
        connect_timeout=float(s.get("connect_timeout") or 10), max_tries=int(s["max_tries"]),
        backoff_max=float(s["max_backoff_seconds"]), school_year=s.get("school_year"),
        instance=s.get("instance"), tenant=s.get("tenant"), context=s.get("context"),
        url_overrides={"data": s.get("data_url"), "oauth": s.get("oauth_url"), "metadata": s.get("metadata_url"),
                       **(url_overrides or {})},
        scope=s.get("scope"), verify=bool(s["verify_ssl"]), ca_bundle=s.get("ca_bundle") or None,
        allowed_origins=s.get("allowed_origins") or None, user_agent=user_agent or USER_AGENT,
        token_cache=open_token_cache(s.get("token_cache")),
    )


__all__ = ["METRICS_LOG_LEVEL", "VERIFY_SSL", "api_properties", "config_errors", "defaults_of", "make_client",
           "retry_properties", "secret_settings", "unknown_settings", "validate_config", "with_defaults"]
