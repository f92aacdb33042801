"""The Stellar restock payload: every rule about its shape, in one module.

A monitor posts one restock object, or an array of up to 100. Each is
checked against the general rules and its site's row in :data:`SITE_RULES`,
then rewritten into the one normalised shape Stellar receives::

    {"site": "amazon", "sku": "B0...", "asin": "B0...", "offerId": "...",
     "details": {"region": "USA", "offerId": "...", "productPrice": "19.99",
                 "productTitle": "...", "productImage": "https://..."}}

Everything here is pure: data in, normalised data or a list of problems out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

MAX_BATCH = 100
MAX_TEXT_LENGTH = 2048

TOP_LEVEL_FIELDS = ("site", "sku", "asin", "offerId", "details")
DETAIL_FIELDS = ("region", "offerId", "productPrice", "productTitle", "productImage")


@dataclass(frozen=True, slots=True)
class SiteRule:
    """What one site needs beyond the general rules.

    ``required`` names fields by where they end up in the normalised
    payload: top-level names, or ``details.<name>``.
    """

    required: tuple[str, ...]


GENERAL_RULE = SiteRule(required=("site", "sku", "details.region"))

SITE_RULES: Mapping[str, SiteRule] = {
    # Stellar's Amazon guide: region, sku and offerId are required.
    "amazon": SiteRule(required=("site", "sku", "details.region", "offerId")),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one item of a webhook body."""

    index: int
    field: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


def parse_json(text: str) -> Any:
    """JSON as Stellar can read it: no NaN or Infinity. Raises ValueError."""

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not allowed")

    return json.loads(text, parse_constant=refuse_constant)


def normalise_body(body: Any) -> tuple[list[dict[str, Any]], list[Problem]]:
    """All items of a webhook body, normalised, or every problem found.

    All or nothing: when the problem list is not empty, the items must not be
    broadcast.
    """
    if isinstance(body, dict):
        items: list[Any] = [body]
    elif isinstance(body, list):
        items = body
        if not items:
            return [], [Problem(0, "", "empty batch")]
        if len(items) > MAX_BATCH:
            return [], [Problem(0, "", f"more than {MAX_BATCH} items in one batch")]
    else:
        return [], [Problem(0, "", "body must be an object or an array of objects")]

    normalised, problems = [], []
    for index, item in enumerate(items):
        payload, item_problems = normalise_item(index, item)
        normalised.append(payload)
        problems.extend(item_problems)

    return normalised, problems


def normalise_item(index: int, item: Any) -> tuple[dict[str, Any], list[Problem]]:
    """One restock in the normalised shape, and the problems found in it."""
    if not isinstance(item, dict):
        return {}, [Problem(index, "", "item must be an object")]

    problems: list[Problem] = []

    def problem(field: str, reason: str) -> None:
        problems.append(Problem(index, field, reason))

    raw_details = item.get("details", {})
    if not isinstance(raw_details, dict):
        problem("details", "must be an object")
        raw_details = {}
    for name in item:
        if name not in TOP_LEVEL_FIELDS:
            problem(name, "unknown field")
    for name in raw_details:
        if name not in DETAIL_FIELDS:
            problem(f"details.{name}", "unknown field")

    def text(source: Mapping[str, Any], name: str, prefix: str = "") -> str | None:
        return _checked(source, name, prefix, _as_text, problem)

    site = text(item, "site")
    sku = text(item, "sku")
    asin = text(item, "asin")
    offer_id = text(item, "offerId")
    detail_offer_id = text(raw_details, "offerId", "details.")
    region = text(raw_details, "region", "details.")
    title = text(raw_details, "productTitle", "details.")
    price = _checked(raw_details, "productPrice", "details.", _as_price, problem)
    image = _checked(raw_details, "productImage", "details.", _as_image_url, problem)

    if site is not None:
        site = site.lower()
    if asin is not None and sku is not None and asin != sku:
        problem("asin", "must equal sku")
    if (
        offer_id is not None
        and detail_offer_id is not None
        and offer_id != detail_offer_id
    ):
        problem("offerId", "differs from details.offerId")
    offer_id = offer_id if offer_id is not None else detail_offer_id

    payload: dict[str, Any] = {"site": site, "sku": sku, "asin": sku}
    details: dict[str, Any] = {"region": region}
    if offer_id is not None:
        payload["offerId"] = offer_id
        details["offerId"] = offer_id
    for name, value in (
        ("productPrice", price),
        ("productTitle", title),
        ("productImage", image),
    ):
        if value is not None:
            details[name] = value
    payload["details"] = details

    rule = SITE_RULES.get(site or "", GENERAL_RULE)
    for required in rule.required:
        if _lookup(payload, required) is None and not _already_reported(
            problems, required
        ):
            problem(
                required, "required" + (f" for {site}" if site in SITE_RULES else "")
            )

    return payload, problems


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes of one text frame's body: compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _checked(
    source: Mapping[str, Any],
    name: str,
    prefix: str,
    convert: Callable[[Any], str],
    problem: Callable[[str, str], None],
) -> str | None:
    if name not in source or source[name] is None:
        return None
    try:
        return convert(source[name])
    except ValueError as exc:
        problem(prefix + name, str(exc))
        return None


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"longer than {MAX_TEXT_LENGTH} characters")

    return str(value)


def _as_price(value: Any) -> str:
    """A price as Stellar wants it: a string; numbers become decimal text."""
    if isinstance(value, bool):
        raise ValueError("must be a string or a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return format(Decimal(repr(value)), "f")

    return _as_text(value)


def _as_image_url(value: Any) -> str:
    url = _as_text(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")

    return url


def _lookup(payload: Mapping[str, Any], dotted: str) -> Any:
    value: Any = payload
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None

    return value


def _already_reported(problems: list[Problem], field: str) -> bool:
    return any(p.field == field for p in problems)
