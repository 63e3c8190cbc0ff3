"""Who may call the server, and what they may do: one policy for gRPC and HTTP.

An :class:`AuthPolicy` answers two questions for every request that is not a health check:

* **authentication** -- the ``Authorization: Bearer <token>`` header (gRPC metadata
  ``authorization``) names a :class:`Principal`. A token is either a *static token* (the policy
  file holds its SHA-256 digest, or points at a file / environment variable holding it; the
  token itself never appears on a command line) or a *JWT* verified with PyJWT (HS256 with a
  shared secret, RS256 with a public key; expiry always required, audience and issuer checked
  when configured). Failure: :class:`~pysonic.errors.UnauthenticatedError` (401 /
  UNAUTHENTICATED).
* **authorization** -- ``allow`` rules say which subjects or scopes may perform which
  :class:`Action` on which models (shell-style patterns). Failure:
  :class:`~pysonic.errors.PermissionDeniedError` (403 / PERMISSION_DENIED).

The transports only map their request to a :class:`Target` (:func:`grpc_target` in
:mod:`pysonic.server.grpc_auth`, the HTTP middleware in :mod:`pysonic.server.http.auth`) and
call :meth:`AuthPolicy.check`. Tokens are never logged and never part of an error message.

Policy file (YAML or JSON)::

    tokens:
      - subject: cms-prod
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        scopes: [infer]
      - subject: operator
        token_file: /run/secrets/pysonic-operator     # the token itself, alone in a file
        scopes: [admin]
    jwt:
      secret_env: PYSONIC_JWT_SECRET      # HS256 (or secret_file)
      public_key_file: /etc/pysonic/jwt.pub   # RS256
      audience: pysonic
      issuer: https://auth.example.org
    allow:
      - scopes: [infer]
        models: ["particlenet*", "deepmet"]
        actions: [infer, metadata]
      - scopes: [admin]
        models: ["*"]
        actions: [infer, metadata, load, unload, shared_memory]

Example::

    policy = AuthPolicy.load("auth.yaml")
    principal = policy.check("Bearer s3cret", Target(Action.INFER, "particlenet_lite"))
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysonic._extras import require
from pysonic.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)

__all__ = ["OPEN", "Action", "AuthPolicy", "JwtVerifier", "Principal", "Rule", "Target"]

log = logging.getLogger(__name__)


class Action(str, enum.Enum):
    """What a request does, as far as authorization cares."""

    INFER = "infer"
    #: model metadata, config and statistics
    METADATA = "metadata"
    LOAD = "load"
    UNLOAD = "unload"
    #: register / unregister / status of (system or CUDA) shared-memory regions
    SHARED_MEMORY = "shared_memory"


@dataclass(frozen=True, slots=True)
class Target:
    """The object of a request: an action on a model (``model`` None: no model involved;
    ``""``: every model). ``action`` None means "any authenticated caller"."""

    action: Action | None = None
    model: str | None = None
    #: health endpoints: no credentials needed
    open: bool = False


#: health checks (live, ready, model ready) need no credentials
OPEN = Target(open=True)
#: server-wide answers (server metadata, repository index): any authenticated caller
AUTHENTICATED = Target()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    scopes: frozenset[str] = frozenset()
    #: "token" (static) or "jwt"
    via: str = "token"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``allow`` entry: callers (by subject or scope; neither = every authenticated
    caller) may perform ``actions`` on models matching ``models`` (shell-style patterns)."""

    actions: frozenset[Action]
    models: tuple[str, ...] = ("*",)
    subjects: frozenset[str] | None = None
    scopes: frozenset[str] | None = None

    def applies_to(self, who: Principal) -> bool:
        if self.subjects is None and self.scopes is None:
            return True
        return bool(
            (self.subjects is not None and who.subject in self.subjects)
            or (self.scopes is not None and self.scopes & who.scopes)
        )

    def allows(self, who: Principal, target: Target) -> bool:
        if target.action not in self.actions or not self.applies_to(who):
            return False
        if target.model is None:
            return True
        if target.model == "":  # a question about every model (e.g. all statistics)
            return "*" in self.models
        return any(fnmatch.fnmatchcase(target.model, p) for p in self.models)


class JwtVerifier:
    """Verify JWTs with PyJWT: HS256 (shared secret) and/or RS256 (public key).

    The key is chosen by the algorithm the token names, among the configured ones only (an
    RS256 public key is never tried as an HMAC secret). ``exp`` is required; ``aud`` and
    ``iss`` are checked when configured. A verified token is remembered until it expires (a
    job sends thousands of requests with one token: measured 250-300 us per signature check
    on a loaded 2-core machine, ~5 us for a remembered one)."""

    #: verified tokens remembered at most (the memory is cleared when full)
    CACHE_SIZE = 4096

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        public_key: bytes | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 0.0,
        subject_claim: str = "sub",
        scope_claim: str = "scope",
    ) -> None:
        self._jwt = require("jwt")  # PyJWT, imported only when JWTs are configured
        self._keys: dict[str, Any] = {}
        if secret:
            self._keys["HS256"] = secret
        if public_key:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                self._keys["RS256"] = load_pem_public_key(public_key)
            except ValueError as err:
                msg = f"jwt: public_key_file is not a PEM public key ({err})"
                raise InvalidArgumentError(msg) from None
        if not self._keys:
            msg = "jwt: give secret_file / secret_env (HS256) or public_key_file (RS256)"
            raise InvalidArgumentError(msg)
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.subject_claim = subject_claim
        self.scope_claim = scope_claim
        self._verified: dict[str, tuple[Principal, float]] = {}

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known[1]:
                return known[0]
            del self._verified[token]
        jwt = self._jwt
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            key = self._keys.get(alg) if isinstance(alg, str) else None
            if key is None:
                msg = f"JWT algorithm {alg!r} is not accepted (accepted: {self.algorithms})"
                raise UnauthenticatedError(msg)
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", self.subject_claim]},
            )
        except jwt.PyJWTError as err:
            # PyJWT's messages name the failed check, never the token
            msg = f"invalid bearer token: {err}"
            raise UnauthenticatedError(msg) from None
        subject = claims.get(self.subject_claim)
        if not isinstance(subject, str) or not subject:
            msg = f"invalid bearer token: claim '{self.subject_claim}' must be a string"
            raise UnauthenticatedError(msg)
        principal = Principal(subject, _scopes(claims.get(self.scope_claim)), via="jwt")
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]) + self.leeway_s)
        return principal


def _scopes(value: Any) -> frozenset[str]:
    """OAuth 2 style scopes: a space-separated string, or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()


def token_digest(token: str) -> str:
    """The SHA-256 hex digest a policy file stores for a static token."""
    return hashlib.sha256(token.encode()).hexdigest()


class AuthPolicy:
    """Static tokens + an optional JWT verifier + allow rules (see the module docstring)."""

    def __init__(
        self,
        *,
        tokens: Mapping[str, Principal] | None = None,
        jwt: JwtVerifier | None = None,
        rules: Iterable[Rule] = (),
    ) -> None:
        #: SHA-256 hex digest of each static token -> its principal
        self._tokens = dict(tokens or {})
        self.jwt = jwt
        self.rules = list(rules)

    # ------------------------------------------------------------------ the checks
    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by an ``Authorization`` header value; UNAUTHENTICATED if none."""
        if not authorization:
            raise UnauthenticatedError("missing credentials: send 'authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError("unsupported credentials: expected 'Bearer <token>'")
        known = self._tokens.get(token_digest(token))
        if known is not None:
            return known
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.verify(token)
        raise UnauthenticatedError("invalid bearer token")

    def authorize(self, who: Principal, target: Target) -> None:
        """PERMISSION_DENIED unless an allow rule covers ``target`` for ``who``."""
        if target.action is None or any(r.allows(who, target) for r in self.rules):
            return
        what = target.action.value
        if target.model:
            what += f" on model '{target.model}'"
        elif target.model == "":
            what += " on every model"
        log.info("denied: subject '%s' may not %s", who.subject, what)
        msg = f"subject '{who.subject}' is not allowed to {what}"
        raise PermissionDeniedError(msg)

    def check(self, authorization: str | None, target: Target) -> Principal | None:
        """Authenticate and authorize one request; None for open (health) targets."""
        if target.open:
            return None
        who = self.authenticate(authorization)
        self.authorize(who, target)
        return who

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Path | str) -> AuthPolicy:
        """Read a YAML (``.yaml`` / ``.yml``) or JSON policy file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            msg = f"cannot read the auth policy {path}: {err.strerror}"
            raise InvalidArgumentError(msg) from None
        if path.suffix in (".yaml", ".yml"):
            yaml = require("yaml")
            parse, errors = yaml.safe_load, (yaml.YAMLError,)
        else:
            parse, errors = json.loads, (ValueError,)
        try:
            data = parse(text)
        except errors as err:
            msg = f"auth policy {path}: {err}"
            raise InvalidArgumentError(msg) from None
        if not isinstance(data, Mapping):
            msg = f"auth policy {path}: the top level must be a mapping"
            raise InvalidArgumentError(msg)
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<policy>") -> AuthPolicy:
        unknown = set(data) - {"tokens", "jwt", "allow"}
        if unknown:
            msg = f"{source}: unknown keys {sorted(unknown)} (expected tokens, jwt, allow)"
            raise InvalidArgumentError(msg)
        tokens: dict[str, Principal] = {}
        for i, entry in enumerate(_list(data.get("tokens"), f"{source}: tokens")):
            digest, principal = _static_token(entry, f"{source}: tokens[{i}]")
            tokens[digest] = principal
        jwt = _jwt(data["jwt"], f"{source}: jwt") if data.get("jwt") else None
        rules = [
            _rule(r, f"{source}: allow[{i}]")
            for i, r in enumerate(_list(data.get("allow"), f"{source}: allow"))
        ]
        policy = cls(tokens=tokens, jwt=jwt, rules=rules)
        log.info(
            "auth: %d static token(s), JWT %s, %d allow rule(s)",
            len(tokens),
            ", ".join(jwt.algorithms) if jwt else "off",
            len(rules),
        )
        return policy


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        msg = f"{where} must be a list"
        raise InvalidArgumentError(msg)
    return value


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"{where} must be a string or a list of strings"
        raise InvalidArgumentError(msg)
    return value


def _secret(entry: Mapping[str, Any], file_key: str, env_key: str, where: str) -> str | None:
    """A secret from a file (stripped of surrounding whitespace) or an environment variable."""
    if entry.get(file_key):
        path = Path(str(entry[file_key]))
        try:
            value = path.read_text().strip()
        except OSError as err:
            msg = f"{where}: cannot read {file_key} {path}: {err.strerror}"
            raise InvalidArgumentError(msg) from None
    elif entry.get(env_key):
        value = os.environ.get(str(entry[env_key]), "").strip()
        if not value:
            msg = f"{where}: environment variable {entry[env_key]} is not set"
            raise InvalidArgumentError(msg)
    else:
        return None
    if not value:
        msg = f"{where}: the secret in {entry[file_key]} is empty"
        raise InvalidArgumentError(msg)
    return value


def _static_token(entry: Any, where: str) -> tuple[str, Principal]:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("subject"), str):
        msg = f"{where}: needs a 'subject' (string)"
        raise InvalidArgumentError(msg)
    if "token" in entry:
        msg = f"{where}: a token in clear is not accepted; give sha256, token_file or token_env"
        raise InvalidArgumentError(msg)
    digest = entry.get("sha256")
    if digest is None:
        token = _secret(entry, "token_file", "token_env", where)
        if token is None:
            msg = f"{where}: give one of sha256, token_file, token_env"
            raise InvalidArgumentError(msg)
        digest = token_digest(token)
    elif not isinstance(digest, str) or len(digest) != 64:
        msg = f"{where}: sha256 must be a 64-digit hex digest"
        raise InvalidArgumentError(msg)
    scopes = frozenset(_strings(entry.get("scopes", []), f"{where}: scopes"))
    return digest.lower(), Principal(entry["subject"], scopes, via="token")


def _jwt(entry: Any, where: str) -> JwtVerifier:
    if not isinstance(entry, Mapping):
        msg = f"{where} must be a mapping"
        raise InvalidArgumentError(msg)
    secret = _secret(entry, "secret_file", "secret_env", where)
    public_key = None
    if entry.get("public_key_file"):
        try:
            public_key = Path(str(entry["public_key_file"])).read_bytes()
        except OSError as err:
            msg = f"{where}: cannot read public_key_file: {err.strerror}"
            raise InvalidArgumentError(msg) from None
    return JwtVerifier(
        secret=secret.encode() if secret else None,
        public_key=public_key,
        audience=entry.get("audience"),
        issuer=entry.get("issuer"),
        leeway_s=float(entry.get("leeway_s", 0.0)),
        subject_claim=str(entry.get("subject_claim", "sub")),
        scope_claim=str(entry.get("scope_claim", "scope")),
    )


def _rule(entry: Any, where: str) -> Rule:
    if not isinstance(entry, Mapping):
        msg = f"{where} must be a mapping"
        raise InvalidArgumentError(msg)
    try:
        actions = frozenset(Action(a) for a in _strings(entry.get("actions"), f"{where}: actions"))
    except ValueError as err:
        known = ", ".join(a.value for a in Action)
        msg = f"{where}: {err} (actions: {known})"
        raise InvalidArgumentError(msg) from None
    subjects = entry.get("subjects")
    scopes = entry.get("scopes")
    return Rule(
        actions=actions,
        models=tuple(_strings(entry.get("models", "*"), f"{where}: models")),
        subjects=None if subjects is None else frozenset(_strings(subjects, f"{where}: subjects")),
        scopes=None if scopes is None else frozenset(_strings(scopes, f"{where}: scopes")),
    )
