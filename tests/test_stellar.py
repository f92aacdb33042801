"""The Stellar payload rules, as pure functions."""

from __future__ import annotations

import pytest

from server.stellar import (
    MAX_BATCH,
    Problem,
    encode,
    normalise_body,
    normalise_item,
    parse_json,
)


def amazon(**overrides: object) -> dict[str, object]:
    item: dict[str, object] = {
        "site": "amazon",
        "sku": "B0SKU",
        "offerId": "OFFER",
        "details": {"region": "USA"},
    }
    item.update(overrides)
    return item


def test_asin_defaults_to_sku():
    payload, problems = normalise_item(0, amazon())

    assert problems == []
    assert payload["asin"] == "B0SKU"


def test_asin_that_differs_from_sku_is_refused():
    _, problems = normalise_item(0, amazon(asin="OTHER"))

    assert problems == [Problem(0, "asin", "must equal sku")]


def test_top_level_offer_id_is_mirrored_into_details():
    payload, _ = normalise_item(0, amazon())

    assert payload["details"]["offerId"] == "OFFER"


def test_details_offer_id_is_mirrored_to_top_level():
    item = amazon(details={"region": "USA", "offerId": "NESTED"})
    del item["offerId"]

    payload, problems = normalise_item(0, item)

    assert problems == []
    assert payload["offerId"] == payload["details"]["offerId"] == "NESTED"


def test_conflicting_offer_ids_are_refused():
    _, problems = normalise_item(
        0, amazon(details={"region": "USA", "offerId": "OTHER"})
    )

    assert problems == [Problem(0, "offerId", "differs from details.offerId")]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (19.99, "19.99"),
        (20, "20"),
        (0.1, "0.1"),
        (1e21, "1000000000000000000000"),
        ("$19.99", "$19.99"),
    ],
)
def test_price_becomes_a_string(given, expected):
    payload, problems = normalise_item(
        0, amazon(details={"region": "USA", "productPrice": given})
    )

    assert problems == []
    assert payload["details"]["productPrice"] == expected


@pytest.mark.parametrize("price", [True, [1], {"a": 1}])
def test_price_of_another_type_is_refused(price):
    _, problems = normalise_item(
        0, amazon(details={"region": "USA", "productPrice": price})
    )

    assert [p.field for p in problems] == ["details.productPrice"]


@pytest.mark.parametrize(
    "url", ["/relative.png", "ftp://host/x.png", "javascript:alert(1)", "https://"]
)
def test_product_image_must_be_an_absolute_http_url(url):
    _, problems = normalise_item(
        0, amazon(details={"region": "USA", "productImage": url})
    )

    assert problems == [
        Problem(0, "details.productImage", "must be an absolute http(s) URL")
    ]


def test_amazon_requires_region_sku_and_offer_id():
    _, problems = normalise_item(0, {"site": "amazon"})

    assert {p.field for p in problems} == {"sku", "details.region", "offerId"}
    assert all(p.reason == "required for amazon" for p in problems)


def test_other_sites_need_no_offer_id():
    payload, problems = normalise_item(
        0, {"site": "walmart", "sku": "123", "details": {"region": "USA"}}
    )

    assert problems == []
    assert "offerId" not in payload


def test_unknown_fields_are_named_at_both_levels():
    _, problems = normalise_item(
        0, amazon(colour="red", details={"region": "USA", "stock": 3})
    )

    assert {p.field for p in problems} == {"colour", "details.stock"}


def test_site_is_lower_cased_so_its_rules_apply():
    payload, problems = normalise_item(0, {"site": "Amazon", "sku": "B0"})

    assert payload["site"] == "amazon"
    assert "offerId" in {p.field for p in problems}


def test_non_string_sku_is_refused():
    _, problems = normalise_item(0, amazon(sku=12345))

    assert problems == [Problem(0, "sku", "must be a string")]


def test_normalised_shape_has_nothing_else():
    payload, _ = normalise_item(
        0,
        amazon(details={"region": "USA", "productTitle": " Shoe ", "productPrice": 5}),
    )

    assert payload == {
        "site": "amazon",
        "sku": "B0SKU",
        "asin": "B0SKU",
        "offerId": "OFFER",
        "details": {
            "region": "USA",
            "offerId": "OFFER",
            "productPrice": "5",
            "productTitle": "Shoe",
        },
    }


def test_problems_carry_the_item_index():
    _, problems = normalise_body([amazon(), amazon(), {"site": "amazon"}])

    assert {p.index for p in problems} == {2}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "empty batch"),
        ([amazon()] * (MAX_BATCH + 1), "more than 100 items in one batch"),
        ("text", "body must be an object or an array of objects"),
        ([1], "item must be an object"),
    ],
)
def test_body_shape_problems(body, reason):
    _, problems = normalise_body(body)

    assert [p.reason for p in problems] == [reason]


def test_nan_is_not_json_here():
    with pytest.raises(ValueError):
        parse_json('{"details": {"productPrice": NaN}}')


def test_encode_is_compact_utf8():
    assert encode({"productTitle": "Café"}) == '{"productTitle":"Café"}'.encode()
