"""Load the :class:`~edfi_core.openapi.ApiModel` of an API: from the live API or from spec files.

Live: the root payload's ``openApiMetadata`` URL lists the documents an ODS/API publishes
(``[{name, endpointUri, prefix}]``); the ``Resources`` and ``Descriptors`` documents of the
SwaggerUI section (prefix ``""``) describe every namespace the API serves (ed-fi, tpdm,
extensions), and documents of the ``Extensions`` section are added when the listing has them.
Composites, profiles, identity and SDK-generation documents are not data resources and are
skipped. Documents are fetched concurrently and parsed with orjson, so even a full real spec
(hundreds of resources, several MB) loads in a second or two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from edfi_core.openapi import ApiModel, SpecError, parse_text
from edfi_core.session import EdFiClient, EdFiHTTPError, check

logger = logging.getLogger(__name__)

#: Listing sections whose documents describe data resources.
DATA_SECTIONS = ("", "extensions")
PRIMARY_DOCUMENTS = ("resources", "descriptors")


def _get_document(client: EdFiClient, url: str) -> dict[str, Any]:
    resp = client.request("GET", url, auth=False)
    if resp.status_code in (401, 403):  # a deployment that protects its metadata
        resp = client.request("GET", url)  # with the token: only to a trusted origin (else OriginError)
    check(resp, "GET", url)
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        doc = parse_text(resp.text, url)  # YAML, unlikely but harmless
    if not isinstance(doc, dict) or not ("swagger" in doc or "openapi" in doc):
        raise SpecError(f"{url}: not a Swagger 2 or OpenAPI 3 document")
    return doc


def metadata_listing(client: EdFiClient) -> list[dict[str, Any]]:
    """The ``/metadata`` listing; empty when the server has none."""
    url = client.urls.metadata
    resp = client.request("GET", url, auth=False)
    if resp.status_code in (401, 403):
        resp = client.request("GET", url)
    if resp.status_code == 404 and client.info.is_dms:
        # DMS names its metadata under the tenant and route qualifiers but serves it only at the server root
        # (MetadataEndpointModule maps /metadata/* without them; docs/dms.md)
        parts = urlsplit(url)
        at_root = urlunsplit((parts.scheme, parts.netloc, "/metadata/specifications", "", ""))
        if at_root != url:
            logger.info("no metadata listing at %s (DMS serves it at the server root): reading %s", url, at_root)
            url = at_root
            resp = client.request("GET", url, auth=False)
    if resp.status_code == 404:
        return []
    check(resp, "GET", url)
    body = orjson.loads(resp.content)
    return [e for e in body if isinstance(e, dict) and e.get("endpointUri")] if isinstance(body, list) else []


def document_urls(client: EdFiClient, listing: list[dict[str, Any]] | None = None) -> list[str]:
    """The URLs of the documents that describe data resources, primary documents first."""
    listing = metadata_listing(client) if listing is None else listing
    primary: list[str] = []
    extensions: list[str] = []
    for entry in listing:
        prefix = str(entry.get("prefix") or "").lower()
        name = str(entry.get("name") or "").lower()
        if prefix not in DATA_SECTIONS:
            continue
        uri = client.secure_url(str(entry["endpointUri"]), "the metadata listing")  # no https -> http
        if prefix == "" and name in PRIMARY_DOCUMENTS:
            primary.append(uri)
        elif prefix == "extensions":
            extensions.append(uri)
    if not primary:
        # no listing (or an unusual one): the documents' conventional place next to the data URL
        base = client.urls.data.replace("/data/v3", "/metadata/data/v3", 1)
        logger.warning("the metadata listing at %s names no Resources/Descriptors documents; trying %s/...",
                       client.urls.metadata, base)
        primary = [f"{base}/{name}/swagger.json" for name in PRIMARY_DOCUMENTS]
    return primary + extensions


def fetch_documents(client: EdFiClient, urls: Iterable[str] | None = None, max_workers: int = 4) -> list[dict]:
    urls = list(urls) if urls is not None else document_urls(client)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(urls) or 1)),
                            thread_name_prefix="edfi-metadata") as pool:
        futures = [pool.submit(_get_document, client, url) for url in urls]
        docs = []
        for url, fut in zip(urls, futures, strict=True):
            try:
                docs.append(fut.result())
            except EdFiHTTPError as exc:
                if exc.status == 404 and url not in urls[:2]:
                    logger.warning("skipping extension document %s: %s", url, exc)
                    continue
                raise
    return docs


def load_model_from_api(client: EdFiClient, max_workers: int = 4) -> ApiModel:
    started = time.perf_counter()
    docs = fetch_documents(client, max_workers=max_workers)
    model = ApiModel.from_documents(docs)
    logger.info("loaded %d resources and descriptors from %d documents in %.1fs", len(model), len(docs),
                time.perf_counter() - started)
    return model


def load_model_from_files(paths: Iterable[str | Path]) -> ApiModel:
    """The model of local spec files (Swagger 2 or OpenAPI 3, JSON or YAML)."""
    started = time.perf_counter()
    docs = []
    for path in paths:
        data = Path(path).read_bytes()
        doc = orjson.loads(data) if data.lstrip()[:1] == b"{" else parse_text(data.decode("utf-8"), str(path))
        if not isinstance(doc, dict) or not ("swagger" in doc or "openapi" in doc):
            raise SpecError(f"{path}: not a Swagger 2 or OpenAPI 3 document")
        docs.append(doc)
    model = ApiModel.from_documents(docs)
    logger.info("loaded %d resources and descriptors from %d files in %.1fs", len(model), len(docs),
                time.perf_counter() - started)
    return model


def load_model(spec_files: Iterable[str | Path] | None, client: EdFiClient) -> ApiModel:
    """The API's model: from local spec files when there are any, else from the API's own documents."""
    return load_model_from_files(spec_files) if spec_files else load_model_from_api(client)
