"""``meterguard check FILE``: validate a plans file, or print what it configures."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from .admin._documents import plan_json, plans_document
from .cli import main, redact
from .config import Config, load_config
from .errors import ConfigError


def _windows(windows: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{w['limit']}/{w['name']}" for w in windows) or "none"


def _describe_price(meter: str, price: dict[str, Any], currency: str) -> str:
    if "tiers" not in price:
        return f"{meter} {price['price']} {currency} per {price['unit']:,}"
    tiers, start = [], 0
    for tier in price["tiers"]:
        end = "" if tier["up_to"] is None else f"{tier['up_to']:,}"
        tiers.append(f"{start:,}-{end}: {tier['price']}")
        start = tier["up_to"] or 0
    return f"{meter} per {price['unit']:,} over, graduated ({'; '.join(tiers)} {currency})"


def _describe_plan(name: str, plan: dict[str, Any], currency: str) -> list[str]:
    quotas = plan["quotas"]
    quota_text = ", ".join(
        f"{meter} {quotas[meter]:,}" if quotas[meter] is not None else f"{meter} unlimited"
        for meter in ("calls", "records")
    )
    overage = plan["overage"]
    if overage == "block":
        overage_text = "block (refused past the quota)"
    else:
        parts = [_describe_price(meter, overage[meter], currency) for meter in ("calls", "records") if overage[meter]]
        if overage["spend_cap"] is not None:
            parts.append(f"spend cap {overage['spend_cap']} {currency}")
        overage_text = "billed: " + ", ".join(parts)
    lines = [
        f"  {name}: {plan['price']} {currency} per period",
        f"    windows:  {_windows(plan['rate_limits'])} ({plan['strategy']})",
    ]
    for match, windows in plan["route_limits"].items():
        lines.append(f"    route:    {match}: {_windows(windows)}")
    lines += [f"    quotas:   {quota_text}", f"    overage:  {overage_text}"]
    if plan["alerts"]:
        lines.append("    alerts:   " + ", ".join(f"{a:g}" for a in plan["alerts"]))
    return lines


@main.command()
@click.argument("file", metavar="FILE")
@click.option(
    "--json", "as_json", is_flag=True, help='JSON on stdout: {"ok": true, ...} or {"ok": false, "errors": [...]}.'
)
def check(file: str, as_json: bool) -> None:
    """Validate a plans file: its errors, one per line (exit 1), or a summary (exit 0)."""
    try:
        config = load_config(file)
    except ConfigError as exc:
        if as_json:
            errors = [
                {
                    "file": issue.file,
                    "line": issue.line,
                    "path": issue.path,
                    "reason": issue.reason,
                    "message": str(issue),
                }
                for issue in exc.issues
            ]
            click.echo(json.dumps({"file": file, "ok": False, "errors": errors}, indent=2))
        else:
            for issue in exc.issues:
                click.echo(str(issue))
        sys.exit(1)
    except Exception as exc:  # a defect of ours: still one line, never a traceback
        message = f"{file}: could not be checked ({type(exc).__name__}: {exc}); please report this"
        if as_json:
            click.echo(json.dumps({"file": file, "ok": False, "errors": [{"message": message}]}, indent=2))
        else:
            click.echo(message)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(_check_document(file, config), indent=2))
        return
    lines = [
        f"{file}: OK (version {config.version}, currency {config.currency}, billing anchor {config.anchor}, "
        f"consistency {config.consistency}, on_store_error {config.on_store_error})",
        f"plans ({len(config.plans)}):",
    ]
    for name, plan in config.plans.items():
        lines += _describe_plan(name, plan_json(plan), config.currency)
    lines.append(f"routes ({len(config.routes.routes)}, first match wins; others: weight 1, all plans):")
    for route in config.routes.routes:
        if route.public:
            lines.append(f"  {route.match}: public (no key, not metered)")
        else:
            plans = ", ".join(sorted(route.plans)) if route.plans is not None else "all plans"
            lines.append(f"  {route.match}: weight {route.weight}, {plans}")
    lines.append(f"customers ({len(config.customers)}):")
    for customer in config.customers.values():
        keys = len(customer.keys)
        lines.append(f"  {customer.id}: plan {customer.plan}, {customer.status}, {keys} key{'s' * (keys != 1)}")
    lines.append(f"store: {redact(config.store) if config.store else 'not set (memory:// unless --store/MG_STORE)'}")
    lines.append(f"admin: {config.admin_path} (on when {config.admin_token_env} is set)")
    lines.append(f"auth: {_describe_auth(config)}")
    click.echo("\n".join(lines))


def _check_document(file: str, config: Config) -> dict[str, Any]:
    """What the text summary says, as data: the admin API's plans document plus the rest of the file."""
    return {
        "file": file,
        "ok": True,
        "version": config.version,
        "consistency": config.consistency,
        "on_store_error": config.on_store_error,
        **plans_document(config),  # currency, billing.anchor, plans, routes
        "customers": [
            {"id": c.id, "plan": c.plan, "status": c.status, "keys": len(c.keys)} for c in config.customers.values()
        ],
        "store": redact(config.store) if config.store else None,
        "admin": {"path": config.admin_path, "token_env": config.admin_token_env},
        "auth": {
            "api_key_header": config.api_key_header,
            "jwt": {"algorithms": list(config.jwt.algorithms)} if config.jwt is not None else None,
            "failed_limit": config.failed_limit,
            "trusted_proxies": [str(network) for network in config.trusted_proxies],
        },
    }


def _describe_auth(config: Config) -> str:
    parts = [f"keys in {config.api_key_header} or Authorization: Bearer"]
    if config.jwt is not None:
        parts.append(f"JWTs signed {'/'.join(config.jwt.algorithms)} (key loaded and checked)")
    if config.failed_limit is None:
        parts.append("failed authentications not throttled")
    else:
        proxies = ", ".join(str(network) for network in config.trusted_proxies) or "none"
        parts.append(f"at most {config.failed_limit} failed authentications per address (trusted proxies: {proxies})")
    return "; ".join(parts)
