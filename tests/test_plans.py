"""Window names and the route table: first match wins, {param} is one segment, '*' ends a path."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from meterguard.plans import MeterPrice, Plan, Route, RouteTable, Window, parse_match, window_name


@pytest.mark.parametrize(
    ("seconds", "name"),
    [
        (1, "1s"),
        (30, "30s"),
        (60, "1m"),
        (90, "90s"),
        (120, "2m"),
        (900, "15m"),
        (3600, "1h"),
        (5400, "90m"),
        (7200, "2h"),
        (86400, "1d"),
        (172800, "2d"),
        (90000, "25h"),
    ],
)
def test_window_name(seconds: int, name: str) -> None:
    assert window_name(seconds) == name


def table(*matches: str) -> RouteTable:
    return RouteTable(tuple(Route(match=m, weight=i + 1) for i, m in enumerate(matches)))


def matched(rt: RouteTable, method: str, path: str) -> str | None:
    route = rt.match(method, path)
    return None if route is None else route.match


# -- parse_match ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /v1/posts", ("GET", "/v1/posts")),
        ("get /v1/posts", ("GET", "/v1/posts")),
        ("  POST   /a/{id}  ", ("POST", "/a/{id}")),
        ("* /v1/*", ("*", "/v1/*")),
    ],
)
def test_parse_match_accepts(text: str, expected: tuple[str, str]) -> None:
    assert parse_match(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("GETT", "METHOD /path"),
        ("/v1/posts", "METHOD /path"),
        ("GET /a /b", "METHOD /path"),
        ("", "METHOD /path"),
        ("GET posts", "must start with '/'"),
        ("GET /a/*/b", "'*' may only end the path"),
        ("GET /**", "'*' may only end the path"),
        ("G3T /a", "not an HTTP method"),
        ("GET-X /a", "not an HTTP method"),
    ],
)
def test_parse_match_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_match(text)


def test_route_method_is_upper_cased_and_compares_by_value() -> None:
    route = Route(match="get /a")
    assert route.method == "GET"
    assert route == Route(match="get /a")
    assert route.allows("anything")
    limited = Route(match="GET /a", plans=frozenset({"pro"}))
    assert limited.allows("pro") and not limited.allows("free")


# -- matching -----------------------------------------------------------------------------------


def test_static_route() -> None:
    rt = table("GET /v1/posts", "POST /v1/posts")
    assert matched(rt, "GET", "/v1/posts") == "GET /v1/posts"
    assert rt.match("POST", "/v1/posts") is rt.routes[1]
    assert matched(rt, "GET", "/v1/posts/") is None
    assert matched(rt, "GET", "/v1/post") is None
    assert matched(rt, "GET", "/v1/posts/1") is None


def test_method_mismatch() -> None:
    rt = table("GET /v1/posts", "GET /v1/posts/{id}", "GET /files/*")
    assert rt.match("DELETE", "/v1/posts") is None
    assert rt.match("POST", "/v1/posts/1") is None
    assert rt.match("PUT", "/files/a") is None


def test_param_matches_exactly_one_segment() -> None:
    rt = table("GET /v1/posts/{id}")
    assert matched(rt, "GET", "/v1/posts/42") == "GET /v1/posts/{id}"
    assert matched(rt, "GET", "/v1/posts/a-b_c.d") == "GET /v1/posts/{id}"
    assert matched(rt, "GET", "/v1/posts/42/comments") is None  # not across '/'
    assert matched(rt, "GET", "/v1/posts/") is None  # not empty
    assert matched(rt, "GET", "/v1/posts") is None
    assert matched(rt, "GET", "/x/v1/posts/42") is None  # anchored at the start


def test_param_in_the_middle_and_several_params() -> None:
    rt = table("GET /v1/{user}/posts/{id}")
    assert matched(rt, "GET", "/v1/u1/posts/9") == "GET /v1/{user}/posts/{id}"
    assert matched(rt, "GET", "/v1/u1/extra/posts/9") is None
    assert matched(rt, "GET", "/v1/u1/posts/9/x") is None


def test_trailing_star_is_a_prefix() -> None:
    rt = table("GET /files/*")
    assert matched(rt, "GET", "/files/") == "GET /files/*"
    assert matched(rt, "GET", "/files/a") == "GET /files/*"
    assert matched(rt, "GET", "/files/a/b/c.txt") == "GET /files/*"
    assert matched(rt, "GET", "/files") is None
    assert matched(rt, "GET", "/filesx") is None
    assert matched(rt, "GET", "/other/files/a") is None


def test_star_method_matches_any_method() -> None:
    rt = table("* /admin/*")
    for method in ("GET", "POST", "DELETE", "PATCH"):
        assert matched(rt, method, "/admin/x") == "* /admin/*"
    assert matched(rt, "GET", "/adminx") is None


def test_pattern_declared_before_static_wins() -> None:
    rt = table("GET /v1/posts/{id}", "GET /v1/posts/search")
    route = rt.match("GET", "/v1/posts/search")
    assert route is rt.routes[0]
    assert route is not None and route.weight == 1


def test_static_declared_before_pattern_wins() -> None:
    rt = table("GET /v1/posts/search", "GET /v1/posts/{id}")
    assert rt.match("GET", "/v1/posts/search") is rt.routes[0]
    assert rt.match("GET", "/v1/posts/7") is rt.routes[1]


def test_star_prefix_first_match_wins_in_both_orders() -> None:
    rt = table("GET /v1/*", "GET /v1/health")
    assert rt.match("GET", "/v1/health") is rt.routes[0]
    rt = table("GET /v1/health", "GET /v1/*")
    assert rt.match("GET", "/v1/health") is rt.routes[0]
    assert rt.match("GET", "/v1/other") is rt.routes[1]


def test_star_method_pattern_before_static_wins() -> None:
    rt = table("* /v1/posts", "GET /v1/posts")
    assert rt.match("GET", "/v1/posts") is rt.routes[0]


def test_first_of_two_patterns_wins() -> None:
    rt = table("GET /v1/{a}/x", "GET /v1/{b}/x", "GET /v1/*")
    assert rt.match("GET", "/v1/q/x") is rt.routes[0]
    assert rt.match("GET", "/v1/q/y") is rt.routes[2]


def test_first_of_duplicate_static_routes_wins() -> None:
    rt = table("GET /a", "GET /a")
    assert rt.match("GET", "/a") is rt.routes[0]


def test_pattern_after_static_does_not_shadow_and_later_pattern_still_matches_other_paths() -> None:
    rt = table("GET /v1/posts/search", "GET /v1/{thing}/search")
    assert rt.match("GET", "/v1/posts/search") is rt.routes[0]
    assert rt.match("GET", "/v1/users/search") is rt.routes[1]


def test_unmatched_is_none() -> None:
    rt = table("GET /a", "GET /b/{id}", "GET /c/*")
    assert rt.match("GET", "/") is None
    assert rt.match("GET", "/d") is None
    assert table().match("GET", "/a") is None


@pytest.mark.parametrize(
    ("match", "path"),
    [
        ("GET /v1/a.b", "/v1/axb"),
        ("GET /v1/a.b/{id}", "/v1/axb/1"),
        ("GET /v1/a+b/{id}", "/v1/aab/1"),
        ("GET /v1/a+b/{id}", "/v1/aaab/1"),
        ("GET /v1/(x)?/{id}", "/v1//1"),
        ("GET /v1/a|b/{id}", "/v1/b/1"),
        ("GET /v1/[ab]/{id}", "/v1/a/1"),
        ("GET /v1/a.b/*", "/v1/axb/z"),
        ("GET /v1/a$/{id}", "/v1/a/1"),
    ],
)
def test_regex_characters_in_paths_are_literal(match: str, path: str) -> None:
    rt = table(match)
    assert rt.match("GET", path) is None
    # ... while the route still matches its own text, taken literally
    literal_path = match.split()[1].replace("{id}", "1").replace("*", "z")
    assert rt.match("GET", literal_path) is rt.routes[0]


def test_malformed_param_is_literal_text() -> None:
    # "{1x}" is not a parameter name, so it matches only itself.
    rt = table("GET /v1/{1x}")
    assert rt.match("GET", "/v1/{1x}") is rt.routes[0]
    assert rt.match("GET", "/v1/abc") is None


# -- plan helpers ---------------------------------------------------------------------------------


def test_windows_for_adds_route_windows() -> None:
    base = Window("1s", 1, 1)
    extra = Window("route-15m", 10, 900)
    plan = Plan(name="free", windows=(base,), route_windows={"GET /a": (extra,)})
    assert plan.windows_for(None) == (base,)
    assert plan.windows_for("GET /a") == (base, extra)
    assert plan.windows_for("GET /b") == (base,)


def test_price_micros() -> None:
    assert MeterPrice(1000, Decimal("1.00")).price_micros == 1_000_000
    assert MeterPrice(1, Decimal("0.000001")).price_micros == 1
    assert MeterPrice(1, Decimal("5.25")).price_micros == 5_250_000
