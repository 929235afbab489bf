"""plans.yaml loading (CONTRACT.md section 5): frozen objects, and one ``FILE:LINE: path: reason`` per error.

Every error test writes the YAML as a list of lines, so the expected line number (from 1, as an
editor counts) can be read off the test itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
from decimal import Decimal
from pathlib import Path

import pytest

from meterguard.config import MAX_FILE_BYTES, Config, load_config, parse_config
from meterguard.errors import ConfigError, ConfigIssue, MeterGuardError
from meterguard.keys import hash_key
from meterguard.plans import MeterPrice, Overage, Quotas, Window

KEY_A = "sha256:" + hashlib.sha256(b"mg_live_key_a").hexdigest()
KEY_B = "sha256:" + hashlib.sha256(b"mg_live_key_b").hexdigest()
REAL_KEY = "mg_live_" + "a" * 32 + "000000"  # format does not matter here: only its hash is written


def doc(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def issues_in(tmp_path: Path, text: str | bytes) -> tuple[str, list[ConfigIssue]]:
    path = tmp_path / "plans.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == "\n".join(str(issue) for issue in info.value.issues)
    assert all(issue.file == str(path) for issue in info.value.issues)
    return str(path), list(info.value.issues)


def one_issue(tmp_path: Path, text: str | bytes) -> tuple[str, ConfigIssue]:
    source, issues = issues_in(tmp_path, text)
    assert len(issues) == 1, issues
    return source, issues[0]


def where(issues: list[ConfigIssue]) -> list[tuple[int | None, str]]:
    return [(issue.line, issue.path) for issue in issues]


# -- the issue type ---------------------------------------------------------------------------------


def test_issue_str_format() -> None:
    assert str(ConfigIssue("plans.yaml", 7, "plans.free.price", "bad")) == "plans.yaml:7: plans.free.price: bad"
    assert str(ConfigIssue("plans.yaml", 1, "", "the file is empty")) == "plans.yaml:1: the file is empty"
    assert str(ConfigIssue("plans.yaml", None, "", "too big")) == "plans.yaml: too big"
    error = ConfigError([ConfigIssue("f", 1, "a", "x"), ConfigIssue("f", 2, "b", "y")])
    assert isinstance(error, MeterGuardError)
    assert str(error) == "f:1: a: x\nf:2: b: y"


def test_parse_config_names_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc("version: 2", "plans:", "  free: {}"), source="inline.yaml")
    assert str(info.value) == "inline.yaml:1: version: Input should be 1"
    with pytest.raises(ConfigError) as info:
        parse_config("")
    assert info.value.issues[0].file == "<config>"


# -- reading the file -------------------------------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            '\tprice: "1"',  # 4  a tab cannot indent YAML
        ),
    )
    assert (issue.line, issue.path) == (4, "")
    assert str(issue) == f"{source}:4: invalid YAML: found character '\\t' that cannot start any token"


def test_yaml_second_document_refused(tmp_path: Path) -> None:
    _, issue = one_issue(tmp_path, doc("version: 1", "plans: {free: {}}", "---", "version: 1"))
    assert (issue.line, issue.path) == (3, "")
    assert issue.reason.startswith("invalid YAML")


def test_billion_laughs_aliases_refused(tmp_path: Path) -> None:
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            'a: &a ["lol", "lol", "lol"]',  # 2
            "b: &b [*a, *a, *a]",  # 3
            "c: &c [*b, *b, *b]",  # 4
            "d: [*c, *c, *c]",  # 5
            "plans:",  # 6
            "  free: {}",  # 7
        ),
    )
    # one issue per alias, each on its own line; nothing is expanded or schema-checked
    assert where(issues) == [(3, "")] * 3 + [(4, "")] * 3 + [(5, "")] * 3
    assert str(issues[0]) == f"{source}:3: YAML aliases are not allowed"


def test_merge_key_alias_refused(tmp_path: Path) -> None:
    _, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            '  base: &base {price: "1"}',  # 3
            "  free:",  # 4
            "    <<: *base",  # 5
        ),
    )
    assert (issue.line, issue.path, issue.reason) == (5, "", "YAML aliases are not allowed")


def test_file_larger_than_one_mib_refused(tmp_path: Path) -> None:
    head = doc("version: 1", "plans:", "  free: {}")
    padding = MAX_FILE_BYTES + 1 - len(head) - 2
    source, issue = one_issue(tmp_path, head + "#" + "x" * padding + "\n")
    assert MAX_FILE_BYTES == 1024 * 1024
    assert (tmp_path / "plans.yaml").stat().st_size == MAX_FILE_BYTES + 1
    assert (issue.line, issue.path) == (None, "")
    assert str(issue) == f"{source}: the file is larger than 1048576 bytes"


def test_file_of_exactly_one_mib_loads(tmp_path: Path) -> None:
    head = doc("version: 1", "plans:", "  free: {}")
    path = tmp_path / "plans.yaml"
    path.write_text(head + "#" + "x" * (MAX_FILE_BYTES - len(head) - 2) + "\n")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert set(load_config(path).plans) == {"free"}


def test_non_utf8_file_refused(tmp_path: Path) -> None:
    text = b'version: 1\nplans:\n  free: {price: "\xff"}\n'
    source, issue = one_issue(tmp_path, text)
    assert (issue.line, issue.path) == (3, "")
    assert str(issue) == f"{source}:3: the file is not UTF-8"


def test_latin1_comment_refused_at_its_line(tmp_path: Path) -> None:
    text = "version: 1\nplans:\n  free: {}\n\n# caf\u00e9\n".encode("latin-1")
    _, issue = one_issue(tmp_path, text)
    assert issue.line == 5


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.path) == (str(path), None, "")
    assert issue.reason.startswith("cannot read the file")


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "   \n"])
def test_empty_file_refused(tmp_path: Path, text: str) -> None:
    source, issue = one_issue(tmp_path, text)
    assert (issue.line, issue.path) == (1, "")
    assert str(issue) == f"{source}:1: the file is empty"


@pytest.mark.parametrize("text", [doc("- version: 1", "- plans: {}"), "just words\n", "42\n", "null\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    source, issue = one_issue(tmp_path, text)
    assert (issue.line, issue.path) == (1, "")
    assert str(issue) == f"{source}:1: the top level must be a mapping (version, plans, ...)"


# -- schema errors ----------------------------------------------------------------------------------


def test_missing_version(tmp_path: Path) -> None:
    source, issue = one_issue(tmp_path, doc("# a plans file", "plans:", "  free: {}"))
    assert (issue.line, issue.path) == (1, "version")
    assert str(issue) == f"{source}:1: version: Field required"


@pytest.mark.parametrize("value", ["2", "0", '"1"', "v1"])
def test_wrong_version(tmp_path: Path, value: str) -> None:
    _, issue = one_issue(tmp_path, doc("# a plans file", "", f"version: {value}", "plans:", "  free: {}"))
    assert (issue.line, issue.path) == (3, "version")
    assert issue.reason == "Input should be 1"


def test_missing_plans(tmp_path: Path) -> None:
    _, issue = one_issue(tmp_path, doc("version: 1", "currency: USD"))
    assert (issue.line, issue.path, issue.reason) == (1, "plans", "Field required")


def test_unknown_field_in_a_plan(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            '    price: "0"',  # 4
            '    rate_limit: ["1/second"]',  # 5  typo of rate_limits
        ),
    )
    assert (issue.line, issue.path) == (5, "plans.free.rate_limit")
    assert str(issue) == f"{source}:5: plans.free.rate_limit: Extra inputs are not permitted"


def test_unknown_top_level_field(tmp_path: Path) -> None:
    _, issue = one_issue(tmp_path, doc("version: 1", "plans:", "  free: {}", "", "consistancy: exact"))
    assert (issue.line, issue.path, issue.reason) == (5, "consistancy", "Extra inputs are not permitted")


def test_float_money_refused(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  pro:",  # 3
            "    price: 5000.00",  # 4  a YAML float
        ),
    )
    assert (issue.line, issue.path) == (4, "plans.pro.price")
    assert str(issue) == (
        f'{source}:4: plans.pro.price: write money as a quoted decimal string, e.g. "5.00" (floats lose cents)'
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"-1"', "must be a finite amount >= 0"),
        ('"NaN"', "must be a finite amount >= 0"),
        ('"Infinity"', "must be a finite amount >= 0"),
        ('"five"', "is not a decimal amount"),
        ('"1.0000001"', "has more than 6 decimal places"),
        ("true", "quoted decimal string"),
        ("[1]", "must be a decimal string"),
    ],
)
def test_bad_money_refused(tmp_path: Path, value: str, reason: str) -> None:
    _, issue = one_issue(tmp_path, doc("version: 1", "plans:", "  pro:", f"    price: {value}"))
    assert (issue.line, issue.path) == (4, "plans.pro.price")
    assert reason in issue.reason


def test_float_spend_cap_refused(tmp_path: Path) -> None:
    _, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  pro:",  # 3
            "    quotas: {calls: 10}",  # 4
            "    overage:",  # 5
            '      calls: {unit: 1000, price: "1.00"}',  # 6
            "      spend_cap: 2500.00",  # 7
        ),
    )
    paths = [issue.path for issue in issues]
    assert "plans.pro.overage.spend_cap" in paths
    cap = issues[paths.index("plans.pro.overage.spend_cap")]
    assert "quoted decimal string" in cap.reason


def test_float_overage_price_points_at_its_line(tmp_path: Path) -> None:
    _, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  pro:",  # 3
            "    quotas: {calls: 10}",  # 4
            "    overage:",  # 5
            "      calls:",  # 6
            "        unit: 1000",  # 7
            "        price: 1.00",  # 8
        ),
    )
    price = [issue for issue in issues if issue.path == "plans.pro.overage.calls.price"]
    assert where(price) == [(8, "plans.pro.overage.calls.price")]


@pytest.mark.parametrize(
    "overage",
    [("    overage:", "      calls: {unit: 1000, price: 1.00}"), ("    overage: blok",)],
    ids=["float-price", "typo"],
)
def test_overage_error_is_reported_once_in_plain_words(tmp_path: Path, overage: tuple[str, ...]) -> None:
    _, issues = issues_in(tmp_path, doc("version: 1", "plans:", "  pro:", "    quotas: {calls: 10}", *overage))
    assert len(issues) == 1, issues
    assert "_Overage" not in issues[0].reason


def test_negative_quota(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            "    quotas:",  # 4
            "      calls: 10",  # 5
            "      records: -1",  # 6
        ),
    )
    assert (issue.line, issue.path) == (6, "plans.free.quotas.records")
    assert str(issue) == f"{source}:6: plans.free.quotas.records: Input should be greater than or equal to 0"


def test_zero_quota_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(doc("version: 1", "plans:", "  free:", "    quotas: {calls: 0}"))
    assert load_config(path).plans["free"].quotas == Quotas(calls=0, records=None)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ('"5 per fortnight"', "'5 per fortnight' is not a rate limit (expected e.g. '50/15 minutes')"),
        ('"lots"', "'lots' is not a rate limit (expected e.g. '50/15 minutes')"),
        ('"0/minute"', "'0/minute': the amount must be at least 1"),
        ("5", "5 is not a rate limit string"),
    ],
)
def test_invalid_rate_limit(tmp_path: Path, item: str, reason: str) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            "    rate_limits:",  # 4  (the list is validated as a whole: the issue names the field)
            '      - "1/second"',  # 5
            f"      - {item}",  # 6
        ),
    )
    assert (issue.line, issue.path) == (4, "plans.free.rate_limits")
    assert str(issue) == f"{source}:4: plans.free.rate_limits: {reason}"


def test_rate_limits_must_be_a_list(tmp_path: Path) -> None:
    _, issue = one_issue(tmp_path, doc("version: 1", "plans:", "  free:", '    rate_limits: "1/second"'))
    assert (issue.line, issue.path) == (4, "plans.free.rate_limits")
    assert issue.reason.startswith("must be a list of rate limit strings")


@pytest.mark.parametrize(
    ("first", "second", "name"),
    [
        ("1/minute", "60/minute", "1m"),
        ("1/minute", "5/1 minute", "1m"),
        ("1/minute", "1/60 seconds", "1m"),
        ("10/hour", "100/60 minutes", "1h"),
        ("50/15 minutes", "60/900 seconds", "15m"),
    ],
)
def test_two_windows_of_the_same_length(tmp_path: Path, first: str, second: str, name: str) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            '    rate_limits: ["1/second"]',  # 4
            "  pro:",  # 5
            f'    rate_limits: ["{first}", "{second}"]',  # 6
        ),
    )
    assert (issue.line, issue.path) == (6, "plans.pro.rate_limits")
    assert str(issue) == f"{source}:6: plans.pro.rate_limits: two windows of the same length ({name})"


def test_same_length_in_route_limits(tmp_path: Path) -> None:
    _, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "routes:",  # 2
            '  - match: "GET /a"',  # 3
            "plans:",  # 4
            "  free:",  # 5
            "    route_limits:",  # 6
            '      "GET /a": ["1/minute", "2/minute"]',  # 7
        ),
    )
    assert (issue.line, issue.path) == (7, "plans.free.route_limits.GET /a")
    assert issue.reason == "two windows of the same length (1m)"


def test_plan_and_route_windows_may_share_a_length(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(
        doc(
            "version: 1",
            "routes:",
            '  - match: "GET /a"',
            "plans:",
            "  free:",
            '    rate_limits: ["1/minute", "100/hour"]',
            "    route_limits:",
            '      "GET /a": ["10/hour"]',
        )
    )
    plan = load_config(path).plans["free"]
    assert plan.windows == (Window("1m", 1, 60), Window("1h", 100, 3600))
    assert plan.windows_for("GET /a") == (
        Window("1m", 1, 60),
        Window("1h", 100, 3600),
        Window("route-1h", 10, 3600, counter="route-1h GET /a"),
    )


def test_route_limits_naming_an_unknown_route(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "routes:",  # 2
            '  - match: "GET /v1/posts"',  # 3
            "plans:",  # 4
            "  free:",  # 5
            "    route_limits:",  # 6
            '      "GET /v1/post": ["10/minute"]',  # 7
        ),
    )
    assert (issue.line, issue.path) == (7, "plans.free.route_limits.GET /v1/post")
    assert str(issue) == (
        f"{source}:7: plans.free.route_limits.GET /v1/post: not the match string of any route in routes"
    )


def test_route_plans_naming_an_unknown_plan(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "routes:",  # 2
            '  - match: "GET /health"',  # 3
            '  - match: "GET /v1/posts"',  # 4
            "    weight: 2",  # 5
            "    plans: [pro, enterprise]",  # 6
            "plans:",  # 7
            "  pro: {}",  # 8
        ),
    )
    assert (issue.line, issue.path) == (6, "routes.1.plans")
    assert str(issue) == f"{source}:6: routes.1.plans: unknown plan 'enterprise'"


def test_public_route_limited_to_plans(tmp_path: Path) -> None:
    _, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",
            "routes:",
            '  - match: "GET /h"',
            "    public: true",
            "    plans: [free]",
            "plans:",
            "  free: {}",
        ),
    )
    assert (issue.line, issue.path) == (4, "routes.0.public")
    assert issue.reason == "a public route cannot be limited to plans"


def test_customer_on_an_unknown_plan(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free: {}",  # 3
            "customers:",  # 4
            "  acme:",  # 5
            "    plan: pro",  # 6
        ),
    )
    assert (issue.line, issue.path) == (6, "customers.acme.plan")
    assert str(issue) == f"{source}:6: customers.acme.plan: unknown plan 'pro'"


@pytest.mark.parametrize(
    "key",
    [
        "mg_live_" + "a" * 38,  # a raw key, not its hash
        KEY_A[:-1],  # 63 hex
        KEY_A + "0",  # 65 hex
        KEY_A.upper().replace("SHA256:", "sha256:"),  # upper-case hex
        "sha1:" + "a" * 40,
        "sha256:" + "g" * 64,
        KEY_A.removeprefix("sha256:"),
        KEY_A + " ",
    ],
)
def test_customer_key_not_in_hashed_form(tmp_path: Path, key: str) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free: {}",  # 3
            "customers:",  # 4
            "  acme:",  # 5
            "    plan: free",  # 6
            "    keys:",  # 7
            f'      - "{key}"',  # 8
        ),
    )
    assert (issue.line, issue.path) == (7, "customers.acme.keys")
    assert str(issue) == (
        f"{source}:7: customers.acme.keys: keys are stored hashed: write 'sha256:<64 lowercase hex>' "
        "(see `meterguard keys hash`)"
    )


def test_same_key_under_two_customers(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free: {}",  # 3
            "customers:",  # 4
            "  acme:",  # 5
            "    plan: free",  # 6
            "    keys:",  # 7
            f'      - "{KEY_A}"',  # 8
            "  globex:",  # 9
            "    plan: free",  # 10
            "    keys:",  # 11
            f'      - "{KEY_B}"',  # 12
            f'      - "{KEY_A}"',  # 13
        ),
    )
    assert (issue.line, issue.path) == (13, "customers.globex.keys.1")
    assert str(issue) == f"{source}:13: customers.globex.keys.1: this key already belongs to 'acme'"


def test_bad_route_match_strings(tmp_path: Path) -> None:
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "routes:",  # 2
            '  - match: "GET /ok"',  # 3
            '  - match: "GETT"',  # 4
            '  - match: "GET posts"',  # 5
            '  - match: "GET /a/*/b"',  # 6
            "plans:",  # 7
            "  free: {}",  # 8
        ),
    )
    assert [str(issue) for issue in issues] == [
        f"{source}:4: routes.1.match: must be 'METHOD /path', e.g. 'GET /v1/posts/{{id}}'",
        f"{source}:5: routes.2.match: path 'posts' must start with '/'",
        f"{source}:6: routes.3.match: '*' may only end the path",
    ]


def test_unknown_methods_and_duplicate_routes_are_refused(tmp_path: Path) -> None:
    """Issue 10: `check` accepted FETCH and a second GET /v1/orders, which could never apply."""
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "routes:",  # 2
            '  - match: "GET /v1/orders"',  # 3
            '  - match: "FETCH /v1/users"',  # 4
            '  - match: "get  /v1/orders"',  # 5
            '  - {match: "GET /v1/orders", weight: 3}',  # 6
            '  - match: "* /v1/orders"',  # 7: a different route (any method)
            '  - match: "PATCH /v1/orders"',  # 8
            "plans:",  # 9
            "  free: {}",  # 10
        ),
    )
    assert [str(issue) for issue in issues] == [
        f"{source}:4: routes.1.match: method 'FETCH' is not an HTTP method; use one of CONNECT, DELETE, GET, "
        "HEAD, OPTIONS, PATCH, POST, PUT, TRACE or *",
        f"{source}:5: routes.2.match: duplicate route: routes.0 (line 3) already matches GET /v1/orders, "
        "and the first match wins",
        f"{source}:6: routes.3.match: duplicate route: routes.0 (line 3) already matches GET /v1/orders, "
        "and the first match wins",
    ]


@pytest.mark.parametrize(
    ("value", "billed", "not_billed"),
    [
        (None, [200, 204, 301, 304, 400, 404, 429, 499], [500, 502, 503, 599]),
        ('["2xx"]', [200, 299], [304, 404, 500]),
        ('["2xx", "3xx", 404, "410"]', [200, 304, 404, 410], [400, 405, 500]),
        ('["200-299", "400-403"]', [200, 400, 403], [404, 500]),
        ('["5XX"]', [500, 599], [200]),
    ],
)
def test_billable_status(value: str | None, billed: list[int], not_billed: list[int]) -> None:
    text = (
        "version: 1\nplans:\n  free: {}\n"
        if value is None
        else f"version: 1\nplans:\n  free: {{billable_status: {value}}}\n"
    )
    plan = parse_config(text).plans["free"]
    assert all(status in plan.billable for status in billed)
    assert not any(status in plan.billable for status in not_billed)


def test_bad_billable_status(tmp_path: Path) -> None:
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            '  a: {billable_status: ["6xx"]}',  # 3
            "  b: {billable_status: [99]}",  # 4
            '  c: {billable_status: ["404-400"]}',  # 5
            "  d: {billable_status: []}",  # 6
            "  e: {billable_status: [true]}",  # 7
            '  f: {billable_status: "2xx"}',  # 8
        ),
    )
    assert [str(issue) for issue in issues] == [
        f"{source}:3: plans.a.billable_status: '6xx' is not a status: write a class (\"2xx\"), a status (404) or "
        'a range ("400-403")',
        f'{source}:4: plans.b.billable_status: 99 is not a status: write a class ("2xx"), a status (404) or '
        'a range ("400-403")',
        f"{source}:5: plans.c.billable_status: '404-400': the range runs backwards",
        f'{source}:6: plans.d.billable_status: must be a non-empty list of statuses: write a class ("2xx"), '
        'a status (404) or a range ("400-403")',
        f'{source}:7: plans.e.billable_status: True is not a status: write a class ("2xx"), a status (404) or '
        'a range ("400-403")',
        f'{source}:8: plans.f.billable_status: must be a non-empty list of statuses: write a class ("2xx"), '
        'a status (404) or a range ("400-403")',
    ]


def test_public_docs_opens_fastapi_docs_first() -> None:
    config = parse_config(
        "version: 1\npublic_docs: true\nroutes:\n  - {match: 'GET /*', weight: 2}\nplans:\n  free: {}\n"
    )
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"):
        route = config.routes.match("GET", path)
        assert route is not None and route.public, path
        assert config.routes.match("HEAD", path) == route
    assert config.routes.match("GET", "/docs/other").weight == 2  # type: ignore[union-attr]
    assert config.routes.match("POST", "/docs") is None
    closed = parse_config("version: 1\nplans:\n  free: {}\n")
    assert closed.routes.match("GET", "/docs") is None


def test_overage_priced_without_a_quota(tmp_path: Path) -> None:
    source, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  pro:",  # 3
            "    quotas:",  # 4
            "      calls: 1000",  # 5
            "    overage:",  # 6
            '      calls: {unit: 1000, price: "1.00"}',  # 7
            '      records: {unit: 1000, price: "5.00"}',  # 8
        ),
    )
    assert (issue.line, issue.path) == (8, "plans.pro.overage.records")
    assert str(issue) == f"{source}:8: plans.pro.overage.records: overage priced but quotas.records is not set"


def test_overage_pricing_nothing(tmp_path: Path) -> None:
    _, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",
            "plans:",
            "  pro:",
            "    quotas: {calls: 1}",
            "    overage:",
            '      spend_cap: "10"',
        ),
    )
    assert (issue.line, issue.path) == (5, "plans.pro.overage")
    assert issue.reason == "price at least one of calls or records, or write 'block'"


def test_duplicate_mapping_keys(tmp_path: Path) -> None:
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            '    price: "0"',  # 4
            '    price: "1"',  # 5
            "  pro: {}",  # 6
            "  free: {}",  # 7
            "version: 1",  # 8
        ),
    )
    assert [str(issue) for issue in issues] == [
        f"{source}:5: plans.free.price: duplicate key",
        f"{source}:7: plans.free: duplicate key",
        f"{source}:8: version: duplicate key",
    ]


def test_list_item_errors_point_at_the_item(tmp_path: Path) -> None:
    _, issue = one_issue(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  pro:",  # 3
            "    alerts:",  # 4
            "      - 0.5",  # 5
            "      - 1",  # 6
            "      - 0",  # 7
        ),
    )
    assert (issue.line, issue.path) == (7, "plans.pro.alerts.2")
    assert issue.reason == "Input should be greater than 0"


def test_several_schema_errors_reported_together(tmp_path: Path) -> None:
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "currency: usd",  # 2
            "plans:",  # 3
            "  free:",  # 4
            "    price: 5.00",  # 5
            "    quotas:",  # 6
            "      calls: -5",  # 7
            '    rate_limit: ["1/second"]',  # 8
            "  pro:",  # 9
            '    rate_limits: ["1/minute", "60/minute"]',  # 10
            "on_store_error: fail_opn",  # 11
        ),
    )
    assert sorted(where(issues), key=lambda pair: pair[0] or 0) == [
        (2, "currency"),
        (5, "plans.free.price"),
        (7, "plans.free.quotas.calls"),
        (8, "plans.free.rate_limit"),
        (10, "plans.pro.rate_limits"),
        (11, "on_store_error"),
    ]


def test_several_cross_reference_errors_reported_together(tmp_path: Path) -> None:
    source, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "routes:",  # 2
            '  - match: "GET /a"',  # 3
            "    plans: [gold]",  # 4
            "plans:",  # 5
            "  free:",  # 6
            "    route_limits:",  # 7
            '      "GET /b": ["1/second"]',  # 8
            "  pro:",  # 9
            "    overage:",  # 10
            '      calls: {unit: 1, price: "1"}',  # 11
            "customers:",  # 12
            "  acme:",  # 13
            "    plan: silver",  # 14
            f'    keys: ["{KEY_A}"]',  # 15
            "  globex:",  # 16
            "    plan: free",  # 17
            f'    keys: ["{KEY_A}"]',  # 18
        ),
    )
    assert sorted(where(issues), key=lambda pair: pair[0] or 0) == [
        (4, "routes.0.plans"),
        (8, "plans.free.route_limits.GET /b"),
        (11, "plans.pro.overage.calls"),
        (14, "customers.acme.plan"),
        (18, "customers.globex.keys.0"),
    ]


def test_schema_and_cross_reference_errors_reported_together(tmp_path: Path) -> None:
    _, issues = issues_in(
        tmp_path,
        doc(
            "version: 1",  # 1
            "plans:",  # 2
            "  free:",  # 3
            "    price: 5.00",  # 4
            "customers:",  # 5
            "  acme:",  # 6
            "    plan: gold",  # 7
        ),
    )
    assert sorted(where(issues), key=lambda pair: pair[0] or 0) == [
        (4, "plans.free.price"),
        (7, "customers.acme.plan"),
    ]


# -- auth.jwt ---------------------------------------------------------------------------------------

JWT_DOC = (
    "version: 1",  # 1
    "auth:",  # 2
    "  jwt:",  # 3
    "    algorithms: [{alg}]",  # 4
    "    key_env: MG_TEST_JWT_SECRET",  # 5
    "plans:",  # 6
    "  free: {{}}",  # 7
)


def jwt_doc(alg: str = "HS256") -> str:
    return doc(*(line.format(alg=alg) for line in JWT_DOC))


def test_jwt_key_env_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MG_TEST_JWT_SECRET", raising=False)
    source, issue = one_issue(tmp_path, jwt_doc())
    assert (issue.line, issue.path) == (5, "auth.jwt.key_env")
    assert str(issue) == f"{source}:5: auth.jwt.key_env: environment variable MG_TEST_JWT_SECRET is not set"


def test_jwt_key_env_empty_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_TEST_JWT_SECRET", "")
    _, issue = one_issue(tmp_path, jwt_doc())
    assert (issue.line, issue.path) == (5, "auth.jwt.key_env")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "HS256, none", "HS1"])
def test_jwt_algorithm_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alg: str) -> None:
    monkeypatch.setenv("MG_TEST_JWT_SECRET", "s3cret-value")
    _, issue = one_issue(tmp_path, jwt_doc(alg))
    assert (issue.line, issue.path) == (4, "auth.jwt.algorithms")
    assert issue.reason.startswith("unsupported algorithm(s)")
    assert "HS256" not in issue.reason.split(";")[0]  # only the bad ones are named


def test_jwt_needs_exactly_one_key_source(tmp_path: Path) -> None:
    _, issue = one_issue(
        tmp_path, doc("version: 1", "auth:", "  jwt:", "    algorithms: [HS256]", "plans:", "  free: {}")
    )
    assert (issue.line, issue.path) == (3, "auth.jwt")
    assert issue.reason.startswith("set exactly one of key_env")


def test_jwt_loaded_and_secret_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Once HS256 and ES256 with a 12-byte secret; both are refused now (test_jwt_key_* below).
    secret = "s3cret-value" * 6  # 72 bytes: HS512 needs at least 64 (RFC 7518 3.2)
    monkeypatch.setenv("MG_TEST_JWT_SECRET", secret)
    path = tmp_path / "plans.yaml"
    path.write_text(jwt_doc("HS256, HS512"))
    config = load_config(path)
    assert config.jwt is not None
    assert config.jwt.algorithms == ("HS256", "HS512")
    assert config.jwt.key == secret
    assert (config.jwt.customer_claim, config.jwt.leeway, config.jwt.issuer) == ("sub", 0, None)
    assert "s3cret-value" not in repr(config.jwt)
    assert "s3cret-value" not in repr(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.jwt.key = "other"  # type: ignore[misc]


# -- a valid file -----------------------------------------------------------------------------------

# CONTRACT.md section 5, verbatim but for the placeholder key.
CONTRACT_EXAMPLE = """\
version: 1
currency: USD
store: redis://127.0.0.1:6379/0      # optional
billing:
  anchor: calendar                    # calendar (1st of month, UTC) | anniversary (customer's start day)
auth:
  api_key_header: x-api-key           # "Authorization: Bearer <key>" is always accepted too
admin:
  path: /_meterguard
  token_env: MG_ADMIN_TOKEN           # admin API is off when the variable is unset
records:
  header: x-meterguard-records
  json_field: data
  max_body_bytes: 1048576             # larger bodies are not parsed (counted via header only)
consistency: exact                    # exact | fast (see section 8)
on_store_error: fail_closed           # fail_closed | fail_open
routes:                               # first match wins; unmatched routes: weight 1, all plans
  - match: "GET /health"
    public: true                      # no key needed, not metered
  - match: "GET /v1/posts/search"     # METHOD PATH; PATH may hold {param} segments and a trailing *
    weight: 1                         # calls charged per request
  - match: "GET /v1/posts/archive"
    weight: 5
    plans: [pro, enterprise]          # entitlement: other plans get 403
plans:
  free:
    price: "0"                        # per billing period, decimal string
    rate_limits: ["1/second", "50/15 minutes"]   # `limits` syntax, per customer across all keys
    route_limits:
      "GET /v1/posts/search": ["10/15 minutes"]
    quotas: {calls: 500, records: 100}           # per billing period; omitted = unlimited
    overage: block                    # refuse past the quota
  pro:
    price: "5000.00"
    rate_limits: ["450/15 minutes"]
    quotas: {calls: 5000000, records: 1000000}
    overage:                          # serve past the quota and bill it
      calls:   {unit: 1000, price: "1.00"}
      records: {unit: 1000, price: "5.00"}
      spend_cap: "2500.00"            # overage spend per period; once reached: 402
    alerts: [0.8, 1.0]                # fractions of a quota; webhook once per period
customers:                            # optional static customers (dynamic ones: admin API/CLI)
  acme:
    plan: pro
    keys: ["sha256:<hex of the key>"]
""".replace("sha256:<hex of the key>", hash_key(REAL_KEY))

ENTERPRISE = '  enterprise:\n    price: "20000"\n    rate_limits: ["5/second"]\n'
FULL = CONTRACT_EXAMPLE.replace("customers:  ", ENTERPRISE + "customers:  ", 1)


def test_contract_example_verbatim_names_an_undefined_plan(tmp_path: Path) -> None:
    # The example in CONTRACT.md entitles `enterprise` on a route but defines no such plan.
    _, issue = one_issue(tmp_path, CONTRACT_EXAMPLE)
    assert (issue.line, issue.path, issue.reason) == (24, "routes.2.plans", "unknown plan 'enterprise'")


@pytest.fixture
def full(tmp_path: Path) -> Config:
    assert FULL != CONTRACT_EXAMPLE
    path = tmp_path / "plans.yaml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.source == str(path)
    return config


def test_full_file_top_level(full: Config) -> None:
    assert full.version == 1
    assert full.currency == "USD"
    assert full.store == "redis://127.0.0.1:6379/0"
    assert full.anchor == "calendar"
    assert full.api_key_header == "x-api-key"
    assert full.jwt is None
    assert full.admin_path == "/_meterguard"
    assert full.admin_token_env == "MG_ADMIN_TOKEN"
    assert full.records_header == "x-meterguard-records"
    assert full.records_json_field == "data"
    assert full.records_max_body_bytes == 1048576
    assert full.consistency == "exact"
    assert full.on_store_error == "fail_closed"
    assert list(full.plans) == ["free", "pro", "enterprise"]


def test_full_file_free_plan(full: Config) -> None:
    free = full.plans["free"]
    assert free.name == "free"
    assert free.price == Decimal("0") and isinstance(free.price, Decimal)
    assert free.windows == (Window("1s", 1, 1), Window("15m", 50, 900))
    assert dict(free.route_windows) == {
        "GET /v1/posts/search": (Window("route-15m", 10, 900, counter="route-15m GET /v1/posts/search"),)
    }
    assert free.quotas == Quotas(calls=500, records=100)
    assert free.overage is None  # block
    assert free.alerts == ()
    assert free.strategy == "sliding"


def test_full_file_pro_plan(full: Config) -> None:
    pro = full.plans["pro"]
    assert isinstance(pro.price, Decimal) and str(pro.price) == "5000.00"
    assert pro.windows == (Window("15m", 450, 900),)
    assert dict(pro.route_windows) == {}
    assert pro.quotas == Quotas(calls=5_000_000, records=1_000_000)
    assert pro.overage == Overage(
        calls=MeterPrice(unit=1000, price=Decimal("1.00")),
        records=MeterPrice(unit=1000, price=Decimal("5.00")),
        spend_cap=Decimal("2500.00"),
    )
    assert pro.overage.calls is not None and pro.overage.records is not None
    assert str(pro.overage.calls.price) == "1.00" and isinstance(pro.overage.calls.price, Decimal)
    assert pro.overage.records.price_micros == 5_000_000
    assert str(pro.overage.spend_cap) == "2500.00"
    assert pro.alerts == (0.8, 1.0)
    enterprise = full.plans["enterprise"]
    assert enterprise.quotas == Quotas(None, None)  # omitted = unlimited
    assert enterprise.windows == (Window("1s", 5, 1),)


def test_full_file_routes(full: Config) -> None:
    routes = full.routes.routes
    assert [(r.match, r.method, r.weight, r.public, r.plans) for r in routes] == [
        ("GET /health", "GET", 1, True, None),
        ("GET /v1/posts/search", "GET", 1, False, None),
        ("GET /v1/posts/archive", "GET", 5, False, frozenset({"pro", "enterprise"})),
    ]
    assert full.routes.match("GET", "/v1/posts/archive") is routes[2]
    assert full.routes.match("GET", "/health") is routes[0]
    assert full.routes.match("POST", "/health") is None
    assert routes[2].allows("pro") and not routes[2].allows("free")


def test_full_file_customers(full: Config) -> None:
    (acme,) = full.customers.values()
    assert acme.id == "acme"
    assert acme.plan == "pro"
    assert acme.keys == (hash_key(REAL_KEY),)
    assert acme.keys[0] == "sha256:" + hashlib.sha256(REAL_KEY.encode()).hexdigest()
    assert acme.status == "active"
    assert acme.anchor_day is None


def test_minimal_file_defaults(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(doc("version: 1", "plans:", "  free: {}"))
    config = load_config(path)
    assert config.store is None
    assert config.currency == "USD"
    assert config.anchor == "calendar"
    assert config.api_key_header == "x-api-key"
    assert config.admin_path == "/_meterguard"
    assert config.admin_token_env == "MG_ADMIN_TOKEN"
    assert config.records_header == "x-meterguard-records"
    assert config.records_json_field == "data"
    assert config.records_max_body_bytes == 8 * 1024 * 1024  # CONTRACT 11: at least 8 MiB
    assert config.consistency == "exact"
    assert config.on_store_error == "fail_closed"
    assert config.jwt is None
    assert dict(config.customers) == {}
    assert config.routes.routes == ()
    free = config.plans["free"]
    assert (free.price, free.windows, free.quotas, free.overage) == (Decimal("0"), (), Quotas(), None)


def test_header_names_are_lower_cased(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(
        doc(
            "version: 1",
            "auth:",
            "  api_key_header: X-Api-Key",
            "records:",
            "  header: X-MeterGuard-Records",
            "  max_body_bytes: 0",
            "consistency: fast",
            "on_store_error: fail_open",
            "billing: {anchor: anniversary}",
            "plans:",
            "  free: {}",
        )
    )
    config = load_config(path)
    assert config.api_key_header == "x-api-key"
    assert config.records_header == "x-meterguard-records"
    assert config.records_max_body_bytes == 0
    assert (config.consistency, config.on_store_error, config.anchor) == ("fast", "fail_open", "anniversary")


def test_config_objects_are_frozen(full: Config) -> None:
    targets: list[tuple[object, str, object]] = [
        (full, "currency", "EUR"),
        (full, "plans", {}),
        (full.plans["pro"], "price", Decimal("1")),
        (full.plans["pro"].windows[0], "limit", 10**9),
        (full.plans["pro"].quotas, "calls", None),
        (full.plans["pro"].overage, "spend_cap", None),
        (full.routes.routes[2], "weight", 0),
        (full.customers["acme"], "plan", "free"),
    ]
    for target, name, value in targets:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, name, value)
    assert full.plans["pro"].price == Decimal("5000.00")


def test_config_mappings_are_read_only(full: Config) -> None:
    with pytest.raises(TypeError):
        full.plans["gold"] = full.plans["pro"]  # type: ignore[index]
    with pytest.raises(TypeError):
        full.customers["evil"] = full.customers["acme"]  # type: ignore[index]
    with pytest.raises(TypeError):
        full.plans["free"].route_windows["GET /x"] = ()  # type: ignore[index]


def test_check_command_refuses_fetch_and_duplicates(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from meterguard import cli

    path = tmp_path / "plans.yaml"
    path.write_text(doc("version: 1", "routes:", '  - match: "FETCH /v1/users"', '  - match: "GET /a"',
                        '  - match: "GET /a"', "plans:", "  free: {}"))  # fmt: skip
    result = CliRunner().invoke(cli.main, ["check", str(path)])
    assert result.exit_code == 1
    assert f"{path}:3: routes.0.match: method 'FETCH' is not an HTTP method" in result.output
    assert f"{path}:5: routes.2.match: duplicate route: routes.1 (line 4)" in result.output
