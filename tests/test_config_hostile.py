"""Hostile and absurd plans files (issue 9): never a traceback, never slow, always FILE:LINE.

Each of these once got past ``meterguard check`` or broke it (docs/security.md): a 500-deep
flow list raised RecursionError, a 50,000-deep one ran for more than a minute, ``"1e30"`` passed
and then crashed the summary, ``mysql://`` and ``"10/0 seconds"`` passed, and a JWT key that did
not fit its algorithms passed, to raise on every request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meterguard import _config_yaml, cli
from meterguard._config_yaml import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from meterguard.config import Config, load_config, parse_config
from meterguard.errors import ConfigError, ConfigIssue

MiB = MAX_FILE_BYTES
HEAD = "version: 1\nplans: {free: {}}\n"
LINE = re.compile(r"^.+:\d+: ")  # FILE:LINE: ...


def issues_of(tmp_path: Path, text: str | bytes, name: str = "plans.yaml") -> list[ConfigIssue]:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return list(info.value.issues)


def reasons(tmp_path: Path, text: str) -> list[str]:
    return [f"{issue.path}: {issue.reason}" for issue in issues_of(tmp_path, text)]


# -- YAML shape: depth and size -----------------------------------------------------------------------

LOADERS = [pytest.param(yaml.CSafeLoader, id="libyaml"), pytest.param(yaml.SafeLoader, id="pure-python")]


@pytest.mark.parametrize("loader", LOADERS)
def test_deep_flow_nesting_fails_fast_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: type
) -> None:
    """Before: RecursionError at 500 levels, more than 60 s at 50,000 (checked against 18c8b91)."""
    monkeypatch.setattr(_config_yaml, "_Loader", loader)
    text = HEAD + "x: " + "[" * 50_000 + "]" * 50_000 + "\n"
    started = time.perf_counter()
    issues = issues_of(tmp_path, text)
    assert time.perf_counter() - started < 1.0
    assert [issue.line for issue in issues] == [3]
    assert "nest" in issues[0].reason  # ours ("nested deeper than 32 levels") or libyaml's own limit


@pytest.mark.parametrize("loader", LOADERS)
def test_our_depth_bound_holds_for_block_and_flow_nesting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: type
) -> None:
    monkeypatch.setattr(_config_yaml, "_Loader", loader)
    block = HEAD + "x:\n" + "".join(" " * (level + 1) + f"k{level}:\n" for level in range(MAX_DEPTH + 5))
    (issue,) = issues_of(tmp_path, block)
    # The top mapping is level 1; k0 (line 4) opens level 2, so k{n} opens level n + 2, on line n + 4.
    assert (issue.line, issue.reason) == (3 + MAX_DEPTH, f"nested deeper than {MAX_DEPTH} levels")
    flow = HEAD + "x: " + "[" * 600 + "]" * 600 + "\n"
    (issue,) = issues_of(tmp_path, flow)
    assert (issue.line, issue.reason) == (3, f"nested deeper than {MAX_DEPTH} levels")


def test_nesting_up_to_the_bound_reads(tmp_path: Path) -> None:
    inner = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)  # the top mapping and x's list are two levels
    path = tmp_path / "plans.yaml"
    path.write_text(HEAD + "x: [" + inner + "]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [issue.reason for issue in info.value.issues] == ["Extra inputs are not permitted"]


def test_too_many_nodes_is_refused_where_it_happens(tmp_path: Path) -> None:
    (issue,) = issues_of(tmp_path, HEAD + "x:\n" + "- 1\n" * (MAX_NODES + 10))
    assert issue.reason == f"more than {MAX_NODES} YAML nodes; a plans file needs far fewer"
    assert issue.line is not None and 3 < issue.line < MAX_NODES + 4


PLAN = '  p{i}:\n    price: "1.00"\n    rate_limits: ["10/second"]\n    quotas: {{calls: 5}}\n'


def _hostile_files() -> dict[str, str]:
    """1 MiB files shaped to make a YAML reader slow: wide, deep, many kinds of scalar."""
    files = {
        "flat-flow-list": HEAD + "x: [" + "1," * (MiB // 2),
        "block-list": HEAD + "x:\n" + "- 1\n" * (MiB // 4),
        "distinct-ints": HEAD + "x:\n" + "".join(f"- {i}\n" for i in range(MiB // 8)),
        "floats": HEAD + "x: [" + "".join(f"{i}.5, " for i in range(MiB // 8)),
        "timestamps": HEAD + "x: [" + "".join(f"2026-01-{1 + i % 28:02d} 10:00:{i % 60:02d}, " for i in range(MiB)),
        "bad-timestamps": HEAD + "x: [" + "2026-13-45, " * (MiB // 12),
        "flow-mapping": HEAD + "x: {" + "".join(f"k{i}: 1, " for i in range(MiB // 8)),
        "deep-then-wide": HEAD + "x: " + "[" * 30 + "1," * (MiB // 2),
        "deep-50k": HEAD + "x: " + "[" * 50_000 + "]" * 50_000 + "\n",
        "block-staircase": HEAD + "x:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1400)),
        "many-plans": "version: 1\nplans:\n" + "".join(PLAN.format(i=i) for i in range(MiB // 80)),
        "duplicate-keys": HEAD + "x:\n" + "  k: 1\n" * (MiB // 8),
        "aliases": HEAD + "a: &a [1]\nx: [" + "*a, " * (MiB // 4),
        "long-string": HEAD + 'x: "' + "a" * (MiB - 64) + '"\n',
        "long-key": HEAD + "a" * (MiB - 64) + ": 1\n",
        "unicode": HEAD + "x: [" + "\u00e9\u4e2d\U0001f600, " * (MiB // 16),
        # limits' rate limit pattern is quadratic in a run of spaces: minutes for this one string
        "rate-limit-spaces": 'version: 1\nplans:\n  free: {rate_limits: ["1' + " " * (MiB - 80) + '/second x"]}\n',
        "failed-limit-spaces": 'version: 1\nauth: {failed_limit: "1'
        + " " * (MiB - 80)
        + '/second x"}\nplans: {free: {}}\n',
    }
    return {name: text[:MiB] for name, text in files.items()}


HOSTILE = _hostile_files()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_mebibyte_reads_within_seconds(tmp_path: Path, name: str) -> None:
    # A bound on the work, not a speed figure: each file reads in ~0.1-0.5 s on a quiet machine and
    # the shapes it guards against (quadratic patterns, alias bombs) take minutes; 5 s leaves room
    # for a machine shared with other test runs (one of these took 1.5 s on 2 busy cores).
    path = tmp_path / f"{name}.yaml"
    path.write_text(HOSTILE[name])
    assert path.stat().st_size <= MAX_FILE_BYTES
    started = time.perf_counter()
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.issues and all(issue.file == str(path) for issue in exc.issues)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"{name}: {elapsed:.2f} s"


# -- check: one line per problem, never a traceback ---------------------------------------------------


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_public(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwt_file(algorithms: str, key_file: Path) -> str:
    return (
        f"version: 1\nauth:\n  jwt:\n    algorithms: [{algorithms}]\n    key_file: {key_file}\nplans: {{free: {{}}}}\n"
    )


BAD_FILES: dict[str, Callable[[Path], str]] = {
    "deep-500": lambda d: HEAD + "x: " + "[" * 500 + "]" * 500 + "\n",
    "deep-50k": lambda d: HEAD + "x: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "price-1e30": lambda d: 'version: 1\nplans:\n  free: {price: "1e30"}\n',
    "spend-cap-1e30": lambda d: (
        'version: 1\nplans:\n  pro:\n    quotas: {calls: 1}\n    overage:\n      calls: {unit: 1, price: "1"}\n'
        '      spend_cap: "1e30"\n'
    ),
    "no-date": lambda d: HEAD + "x: 2026-13-45\n",
    "bad-int-tag": lambda d: HEAD + "x: !!int abc\n",
    "python-tag": lambda d: HEAD + "x: !!python/object/apply:os.system [echo hi]\n",
    "set-tag": lambda d: HEAD + "x: !!set {a, b}\n",
    "complex-key": lambda d: HEAD + "? [a, b]\n: 1\n",
    "mysql-store": lambda d: HEAD + "store: mysql://x\n",
    "zero-window": lambda d: 'version: 1\nplans:\n  free: {rate_limits: ["10/0 seconds"]}\n',
    "huge-quota": lambda d: f"version: 1\nplans:\n  free: {{quotas: {{calls: {2**53}}}}}\n",
    "hostname-as-key": lambda d: jwt_file("RS256", (d / "hostname").resolve()),
    "binary-key": lambda d: jwt_file("RS256", (d / "key.der").resolve()),
    "mixed-families": lambda d: jwt_file("RS256, HS256", (d / "public.pem").resolve()),
    "tab": lambda d: "version: 1\nplans:\n\tfree: {}\n",
}


@pytest.fixture
def key_files(tmp_path: Path, rsa_private: rsa.RSAPrivateKey) -> Path:
    (tmp_path / "hostname").write_text("gateway-7\n")
    (tmp_path / "key.der").write_bytes(
        rsa_private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    )
    (tmp_path / "public.pem").write_text(pem_public(rsa_private))
    return tmp_path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_check_refuses_each_bad_file_in_file_line_form(key_files: Path, name: str) -> None:
    """Run against 18c8b91 (before issue 9): tracebacks on deep-500, price-1e30, spend-cap-1e30, no-date,
    bad-int-tag and binary-key; exit 0 on mysql-store, zero-window, huge-quota, hostname-as-key and
    mixed-families; deep-50k still running after 20 s."""
    path = key_files / f"{name}.yaml"
    path.write_text(BAD_FILES[name](key_files))
    started = time.perf_counter()
    result = CliRunner().invoke(cli.main, ["check", str(path)], catch_exceptions=False)
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert lines and all(LINE.match(line) and line.startswith(str(path)) for line in lines), lines


# -- values that are not what anyone means -------------------------------------------------------------


def money_doc(value: str) -> str:
    return f"version: 1\nplans:\n  free: {{price: {value}}}\n"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('"1e30"', "is not a plain decimal amount"),
        ('"1E3"', "is not a plain decimal amount"),
        ('"1_000"', "is not a plain decimal amount"),
        ('"+5"', "is not a plain decimal amount"),
        ('"-0"', "is not a plain decimal amount"),
        ('" 5 . 0"', "is not a decimal amount"),
        ('"NaN"', "must be a finite amount >= 0"),
        ('"sNaN"', "must be a finite amount >= 0"),
        ('"Infinity"', "must be a finite amount >= 0"),
        ('"-Infinity"', "must be a finite amount >= 0"),
        ('"1000000000"', "is too large"),
        ("1000000000", "is too large"),
        ('"99999999999999999999999999999999"', "is too large"),
    ],
)
def test_absurd_amounts_are_refused(tmp_path: Path, value: str, reason: str) -> None:
    (issue,) = issues_of(tmp_path, money_doc(value))
    assert (issue.line, issue.path) == (3, "plans.free.price")
    assert reason in issue.reason


@pytest.mark.parametrize("value", ['"0"', '"999999999.999999"', '"0.005"', "12", '" 5.00 "'])
def test_plain_amounts_load(value: str) -> None:
    parse_config(money_doc(value))


def test_absurd_spend_cap_and_tier_price_are_refused(tmp_path: Path) -> None:
    text = (
        "version: 1\nplans:\n  pro:\n    quotas: {calls: 1}\n    overage:\n"
        '      calls: {unit: 1, tiers: [{up_to: 10, price: "1_0"}, {up_to: null, price: "1"}]}\n'
        '      spend_cap: "1e30"\n'
    )
    assert sorted(reasons(tmp_path, text)) == [
        "plans.pro.overage.calls.tiers.0.price: '1_0' is not a plain decimal amount: write digits and a point, "
        'e.g. "1000.00"',
        "plans.pro.overage.spend_cap: '1e30' is not a plain decimal amount: write digits and a point, e.g. \"1000.00\"",
    ]


@pytest.mark.parametrize(
    "limit", ["10/0 seconds", "10 per 0 minutes", "5/00 hours", "1/second;10/0 minutes", "10/0second"]
)
def test_zero_length_windows_are_refused(tmp_path: Path, limit: str) -> None:
    """Before: limits reads a multiple of 0 as 1, so "10/0 seconds" became 10 per second."""
    (issue,) = issues_of(tmp_path, f'version: 1\nplans:\n  free: {{rate_limits: ["{limit}"]}}\n')
    assert issue.path == "plans.free.rate_limits"
    assert "cannot be 0 long" in issue.reason


def test_zero_length_route_window_and_failed_limit_are_refused(tmp_path: Path) -> None:
    text = (
        'version: 1\nauth: {failed_limit: "5/0 minutes"}\nroutes:\n  - {match: "GET /x"}\nplans:\n'
        '  free:\n    route_limits: {"GET /x": ["1/0 seconds"]}\n'
    )
    assert [issue.path for issue in issues_of(tmp_path, text)] == [
        "auth.failed_limit",
        "plans.free.route_limits.GET /x",
    ]


def test_windows_of_one_unit_still_load() -> None:
    config = parse_config('version: 1\nplans:\n  free: {rate_limits: ["10/1 second", "100 per 10 seconds"]}\n')
    assert [(w.limit, w.seconds) for w in config.plans["free"].windows] == [(10, 1), (100, 10)]


@pytest.mark.parametrize(
    ("plan", "path"),
    [
        (f"{{quotas: {{calls: {2**53}}}}}", "plans.free.quotas.calls"),
        (f"{{quotas: {{records: {10**30}}}}}", "plans.free.quotas.records"),
        (f'{{rate_limits: ["{2**53}/minute"]}}', "plans.free.rate_limits"),
        ('{rate_limits: ["1/10000 days"]}', "plans.free.rate_limits"),
        (
            f'{{quotas: {{calls: 1}}, overage: {{calls: {{unit: {2**53}, price: "1"}}}}}}',
            "plans.free.overage.calls.unit",
        ),
    ],
    ids=["calls-2^53", "records-1e30", "window-amount", "window-length", "unit"],
)
def test_counts_beyond_two_to_the_53_are_refused(tmp_path: Path, plan: str, path: str) -> None:
    (issue,) = issues_of(tmp_path, f"version: 1\nplans:\n  free: {plan}\n")
    assert issue.path == path


def test_the_largest_exact_count_loads() -> None:
    config = parse_config(f"version: 1\nplans:\n  free: {{quotas: {{calls: {2**53 - 1}}}}}\n")
    assert config.plans["free"].quotas.calls == 2**53 - 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://x", "unknown store URL scheme 'mysql'"),
        ("http://127.0.0.1:6379", "unknown store URL scheme 'http'"),
        ("127.0.0.1:6379", "unknown store URL scheme"),
        ("redis://", "redis:// needs a host"),
        ("redis://h:99999/0", "not a valid store URL"),
        ("redis://h:port/0", "not a valid store URL"),
        ("redis://h:6379/zero", "the database must be a number"),
        ("redis+cluster://a:7001,b:x", "cluster nodes are host[:port]"),
        ("redis://h:6379/0?prefix=no%20spaces", "store URL prefix"),
    ],
)
def test_store_urls_are_checked_without_connecting(tmp_path: Path, url: str, reason: str) -> None:
    (issue,) = issues_of(tmp_path, HEAD + f'store: "{url}"\n')
    assert (issue.line, issue.path) == (3, "store")
    assert reason in issue.reason


@pytest.mark.parametrize(
    "url",
    ["memory://", "redis://127.0.0.1:6379/0", "rediss://user:pw@h:6380/1", "redis+cluster://a:7001,b", "redis://h"],
)
def test_good_store_urls_load(url: str) -> None:
    assert parse_config(HEAD + f'store: "{url}"\n').store == url


# -- JWT keys are loaded, and must fit their algorithms --------------------------------------------------


def test_a_key_that_is_no_pem_is_refused_at_load(key_files: Path) -> None:
    """Before: accepted; every JWT-shaped credential then raised InvalidKeyError (a 500)."""
    path = key_files / "plans.yaml"
    path.write_text(jwt_file("RS256", key_files / "hostname"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert (issue.line, issue.path) == (5, "auth.jwt.key_file")
    assert issue.reason.startswith("the key is not an RSA public key usable with RS256")


def test_algorithms_needing_two_kinds_of_key_are_refused(key_files: Path) -> None:
    """Before: accepted; a token whose header said HS256 raised InvalidKeyError (a 500)."""
    path = key_files / "plans.yaml"
    path.write_text(jwt_file("RS256, HS256", key_files / "public.pem"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert (issue.line, issue.path) == (4, "auth.jwt.algorithms")
    assert "an HMAC secret and an RSA public key" in issue.reason


def test_rsa_and_pss_share_a_key(key_files: Path) -> None:
    path = key_files / "plans.yaml"
    path.write_text(jwt_file("RS256, PS256", key_files / "public.pem"))
    config = load_config(path)
    assert config.jwt is not None and config.jwt.verifier is not None


def test_a_private_key_is_refused(key_files: Path, rsa_private: rsa.RSAPrivateKey) -> None:
    """PyJWT would try to verify with it and raise AttributeError: a 500 on every token."""
    private = key_files / "private.pem"
    private.write_bytes(
        rsa_private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path = key_files / "plans.yaml"
    path.write_text(jwt_file("RS256", private))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "private key" in info.value.issues[0].reason


def test_an_ec_key_on_the_wrong_curve_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "p384.pem"
    key.write_text(pem_public(ec.generate_private_key(ec.SECP384R1())))
    path = tmp_path / "plans.yaml"
    path.write_text(jwt_file("ES256", key))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "ES256" in info.value.issues[0].reason
    path.write_text(jwt_file("ES384", key))
    assert load_config(path).jwt is not None


@pytest.mark.parametrize(("algorithm", "length"), [("HS256", 31), ("HS384", 47), ("HS512", 63)])
def test_short_hmac_secrets_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str, length: int
) -> None:
    """RFC 7518 3.2: a key at least as long as the hash. PyJWT only warns, on every request."""
    monkeypatch.setenv("MG_TEST_SECRET", "k" * length)
    text = (
        f"version: 1\nauth:\n  jwt:\n    algorithms: [{algorithm}]\n    key_env: MG_TEST_SECRET\n"
        "plans: {free: {}}\n"
    )
    (issue,) = issues_of(tmp_path, text)
    assert (issue.line, issue.path) == (5, "auth.jwt.key_env")
    assert "too weak" in issue.reason
    monkeypatch.setenv("MG_TEST_SECRET", "k" * (length + 1))
    assert parse_config(text).jwt is not None


def test_a_huge_or_binary_key_file_is_refused(key_files: Path) -> None:
    huge = key_files / "huge.pem"
    huge.write_text("-----BEGIN PUBLIC KEY-----\n" + "A" * 100_000)
    for key, reason in [(huge, "is larger than 65536 bytes"), (key_files / "key.der", "is not text")]:
        path = key_files / "plans.yaml"
        path.write_text(jwt_file("RS256", key))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert reason in info.value.issues[0].reason


# -- auth settings -----------------------------------------------------------------------------------------


def test_auth_throttle_settings_and_their_defaults() -> None:
    default: Config = parse_config(HEAD)
    assert (default.failed_limit, default.trusted_proxies, default.max_credential_bytes) == ("60/minute", (), 4096)
    config = parse_config(
        HEAD + 'auth: {failed_limit: "10 per 5 minutes", trusted_proxies: ["10.0.0.0/8", "2001:db8::1"],'
        " max_credential_bytes: 8192}\n"
    )
    assert config.failed_limit == "10 per 5 minutes"
    assert [str(network) for network in config.trusted_proxies] == ["10.0.0.0/8", "2001:db8::1/128"]
    assert config.max_credential_bytes == 8192
    assert parse_config(HEAD + "auth: {failed_limit: null}\n").failed_limit is None


@pytest.mark.parametrize(
    ("auth", "path"),
    [
        ('{failed_limit: "lots"}', "auth.failed_limit"),
        ('{failed_limit: "1/second;2/minute"}', "auth.failed_limit"),
        ("{failed_limit: 60}", "auth.failed_limit"),
        ('{trusted_proxies: ["10.0.0.0/33"]}', "auth.trusted_proxies"),
        ('{trusted_proxies: "10.0.0.0/8"}', "auth.trusted_proxies"),
        ("{trusted_proxies: [proxy.internal]}", "auth.trusted_proxies"),
        ("{max_credential_bytes: 100}", "auth.max_credential_bytes"),
        ("{max_credential_bytes: 1048576}", "auth.max_credential_bytes"),
    ],
)
def test_bad_auth_settings_are_refused(tmp_path: Path, auth: str, path: str) -> None:
    (issue,) = issues_of(tmp_path, HEAD + f"auth: {auth}\n")
    assert (issue.line, issue.path) == (3, path)
