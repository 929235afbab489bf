"""``auth.jwt`` of plans.yaml: the verifying key, read and loaded at config time.

A key that is missing, unreadable, private, too weak or of the wrong kind for its algorithms is a
config error (``meterguard check`` names it), never an exception while serving a request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jwt

from ._config_schema import JWTSchema
from ._config_settings import JWTSettings
from ._config_yaml import Loc

Problem = Callable[[Loc, str], None]  # records a config issue at a location


MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM public key is a few KB; anything larger is the wrong file

#: The kind of key each algorithm family needs. One key cannot serve two kinds: PyJWT refuses a PEM
#: as an HMAC secret, at request time, with an exception that used to surface as a 500.
_KEY_KINDS = {"HS": "an HMAC secret", "RS": "an RSA public key", "PS": "an RSA public key",
              "ES": "an EC public key", "Ed": "an Ed25519/Ed448 public key"}  # fmt: skip


def load_jwt(raw: JWTSchema, problem: Problem) -> JWTSettings | None:
    if (raw.key_env is None) == (raw.key_file is None):
        problem(("auth", "jwt"), "set exactly one of key_env (secret or PEM in a variable) or key_file (PEM)")
        return None
    where: Loc = ("auth", "jwt", "key_env") if raw.key_env is not None else ("auth", "jwt", "key_file")
    if raw.key_env is not None:
        key = os.environ.get(raw.key_env)
        if not key:
            problem(where, f"environment variable {raw.key_env} is not set")
            return None
    else:
        assert raw.key_file is not None
        try:
            with open(raw.key_file, "rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            problem(where, f"cannot read {raw.key_file}: {exc.strerror}")
            return None
        if len(data) > MAX_KEY_FILE_BYTES:
            problem(where, f"{raw.key_file} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key")
            return None
        try:
            key = data.decode("utf-8")
        except UnicodeDecodeError:
            problem(where, f"{raw.key_file} is not text: give the key as PEM")
            return None
    kinds = sorted({_KEY_KINDS[alg[:2]] for alg in raw.algorithms})
    if len(kinds) > 1:
        problem(
            ("auth", "jwt", "algorithms"),
            f"{', '.join(raw.algorithms)} need {' and '.join(kinds)}: one key cannot be both; list one kind",
        )
        return None
    verifier = _verifier(raw.algorithms, key, where, problem)
    if verifier is None:
        return None
    return JWTSettings(
        algorithms=tuple(raw.algorithms),
        key=key,
        issuer=raw.issuer,
        audience=raw.audience,
        customer_claim=raw.customer_claim,
        leeway=raw.leeway,
        verifier=verifier,
    )


def _verifier(algorithms: list[str], key: str, where: Loc, problem: Problem) -> Any:
    """The key as PyJWT uses it, loaded now so that a key that does not fit its algorithms is a
    config error (``meterguard check`` names it), never an exception while serving a request."""
    verifier: Any = None
    for name in algorithms:
        algorithm = jwt.get_algorithm_by_name(name)
        try:
            verifier = algorithm.prepare_key(key)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            problem(where, f"the key is not {_KEY_KINDS[name[:2]]} usable with {name}: {exc}")
            return None
        if hasattr(verifier, "public_key"):
            problem(where, "this is a private key: give the gateway the public key (it only verifies)")
            return None
        weak = algorithm.check_key_length(verifier)
        if weak:
            problem(where, f"the key is too weak for {name}: {weak}")
            return None
    return verifier


__all__ = ["MAX_KEY_FILE_BYTES", "load_jwt"]
