"""JWT verification (PyJWT) with the contract's rules, and token minting for tools and tests.

Rules: the algorithm comes from an allow-list (``none`` never), ``exp`` and
``sub`` are required, ``aud``/``iss`` are checked when configured, and the
key is chosen by the algorithm's family so a public key can never be used
as an HMAC secret. Keys an operator configured (`TokenVerifier.from_settings`) must
also be real ones: not the published dev key, not a few characters repeated, and
never beside `--dev`.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from realtime_shared.routing import fits_routing_key
from realtime_shared.settings import DEV_JWT_SECRET, RealtimeSettings
from realtime_shared.streams import CATALOG

MIN_HMAC_KEY_BYTES = 32
"""RFC 7518 §3.2: an HS256 key must be at least as long as the hash output."""

MIN_KEY_ENTROPY_BITS = 80
"""Far below any random key the length rule admits (32 random hex characters estimate at
92 bits or more, `openssl rand -hex 32` at about 240), far above a typed pattern ('k' * 32
estimates at 0 bits, 'abcd' * 8 at 64): see `estimated_key_bits`."""

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

PERMISSION_MANAGE_NOTIFICATIONS = "notification.manage"
PERMISSION_ADMIN = "realtime.admin"


class AuthError(Exception):
    """A request whose credentials are not acceptable (HTTP 401)."""

    reason = "invalid"


class TokenMissing(AuthError):
    reason = "missing"


class TokenExpired(AuthError):
    reason = "expired"


class TokenInvalid(AuthError):
    reason = "invalid"


class _WrongKey(TokenInvalid):
    """The signature does not match this key (another accepted key may match)."""


class KeyConfigError(ValueError):
    """The JWT settings cannot verify anything safely; the process must not start."""


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    exp: int
    permissions: frozenset[str] = frozenset()
    streams: frozenset[str] | None = None
    publish: frozenset[str] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    def has(self, permission: str) -> bool:
        return permission in self.permissions

    def may_hold(self, stream: str) -> bool:
        """Per-stream authorization: a `streams` claim limits what may be subscribed."""
        return self.streams is None or stream in self.streams

    def may_publish(self, stream: str) -> bool:
        """A `publish` claim limits the (interactive, held) streams a client may send on."""
        return self.publish is None or stream in self.publish


class TokenVerifier:
    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        secret: str | None = None,
        previous_secrets: Iterable[str] = (),
        public_key: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0,
        cache_size: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`previous_secrets` and further PEM blocks in `public_key` are keys still accepted
        during a rotation, tried in order after the first when a signature does not match.
        `cache_size`: how many verified tokens to remember (0: none), for callers that send
        the same token on every request; a remembered one is only re-checked for expiry."""
        self.algorithms = [a for a in algorithms]
        self._secret = secret
        self._previous_secrets = list(previous_secrets)
        self._public_key = public_key
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._cache_size = cache_size
        self._cache: dict[str, Claims] = {}
        self._clock = clock
        self._check_config()
        self._keys = self._prepare_keys()

    def _prepare_keys(self) -> dict[str, list[Any]]:
        """Every accepted key per algorithm, parsed once (PyJWT would load a PEM per verify).

        Any key that cannot be used stops the start, rather than refusing its tokens later.
        """
        registry = get_default_algorithms()
        keys: dict[str, list[Any]] = {}
        for alg in (a for a in self.algorithms if a in HMAC_ALGORITHMS):
            assert self._secret is not None  # guaranteed by _check_config
            secrets = [self._secret, *self._previous_secrets]
            try:
                keys[alg] = [registry[alg].prepare_key(key) for key in secrets]
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise KeyConfigError(
                    f"JWT_SECRET or JWT_PREVIOUS_SECRETS cannot be used for {alg}: {exc}"
                ) from None
        public = [a for a in self.algorithms if a in PUBLIC_KEY_ALGORITHMS]
        if not public:
            return keys
        assert self._public_key is not None
        blocks = pem_blocks(self._public_key)
        used = [False] * len(blocks)
        for alg in public:
            keys[alg] = []
            for i, pem in enumerate(blocks):
                try:
                    key = registry[alg].prepare_key(pem)
                except (jwt.InvalidKeyError, ValueError, TypeError):
                    continue  # another family's key (RS256 and ES256 side by side)
                if not isinstance(key, PUBLIC_KEY_TYPES):
                    raise KeyConfigError(
                        "JWT_PUBLIC_KEY holds a private key: give the services the public key"
                    )
                keys[alg].append(key)
                used[i] = True
            if not keys[alg]:
                raise KeyConfigError(f"no key in JWT_PUBLIC_KEY can be used for {alg}")
        for i, ok in enumerate(used):
            if not ok:
                raise KeyConfigError(
                    f"key {i + 1} of {len(blocks)} in JWT_PUBLIC_KEY cannot be used for "
                    f"{', '.join(public)}: damaged, or of another type or curve"
                )
        return keys

    @classmethod
    def from_settings(cls, settings: RealtimeSettings, *, cache_size: int = 0) -> TokenVerifier:
        """The verifier for an operator's settings, which must hold real keys (see
        `refuse_weak_key`) and none at all in dev mode: `/dev/token` hands out tokens to
        anyone, so a dev process must never accept tokens of a configured key."""
        if settings.dev and (configured := settings.configured_keys()):
            raise KeyConfigError(
                "--dev signs tokens with the public development key, never with a configured "
                f"one: unset {' and '.join(configured)}, or start without --dev"
            )
        public = settings.jwt_public_key
        verifier = cls(
            cache_size=cache_size,
            algorithms=settings.jwt_algorithms,
            secret=settings.effective_jwt_secret(),
            previous_secrets=settings.previous_jwt_secrets(),
            public_key=public.get_secret_value() if public else None,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
        hmac = any(a in HMAC_ALGORITHMS for a in verifier.algorithms)
        if hmac and settings.jwt_secret is not None:
            refuse_weak_key("JWT_SECRET", settings.jwt_secret.get_secret_value())
            for key in settings.previous_jwt_secrets():
                refuse_weak_key("a key in JWT_PREVIOUS_SECRETS", key)
        return verifier

    def _check_config(self) -> None:
        if not self.algorithms:
            raise KeyConfigError("JWT_ALGORITHMS is empty")
        for alg in self.algorithms:
            if alg.lower() == "none":
                raise KeyConfigError("JWT_ALGORITHMS must not contain 'none'")
            if alg not in HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS:
                raise KeyConfigError(f"unsupported JWT algorithm {alg!r}")
        if any(a in HMAC_ALGORITHMS for a in self.algorithms):
            if self._secret is None:
                raise KeyConfigError(
                    "JWT_SECRET is not set: refusing to start (set it, or pass --dev for "
                    "a local, insecure development key)"
                )
            for name, key in [("JWT_SECRET", self._secret)] + [
                ("a key in JWT_PREVIOUS_SECRETS", key) for key in self._previous_secrets
            ]:
                if len(key.encode()) < MIN_HMAC_KEY_BYTES:
                    raise KeyConfigError(
                        f"{name} is {len(key.encode())} bytes; HMAC keys must be at "
                        f"least {MIN_HMAC_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                    )
        if any(a in PUBLIC_KEY_ALGORITHMS for a in self.algorithms) and not self._public_key:
            raise KeyConfigError("JWT_PUBLIC_KEY (PEM) is required for RS*/PS*/ES*/EdDSA")

    def verify(self, token: str | None) -> Claims:
        if not token:
            raise TokenMissing("no token given")
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token)
            if self._cache_size:
                if len(self._cache) >= self._cache_size:
                    del self._cache[next(iter(self._cache))]  # the oldest
                self._cache[token] = claims
        elif claims.exp <= self._clock() - self.leeway:  # PyJWT's own expiry rule
            del self._cache[token]
            raise TokenExpired("token has expired")
        return claims

    def _decode(self, token: str) -> Claims:
        if len(self.algorithms) == 1:
            # The usual case: one key, and PyJWT refuses any other `alg` itself; skipping
            # the separate header parse saves a measurable share of a connect's CPU.
            alg = self.algorithms[0]
        else:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError:
                raise TokenInvalid("malformed token") from None
            named = header.get("alg")
            if not isinstance(named, str) or named not in self.algorithms:
                raise TokenInvalid(f"algorithm {named!r} is not accepted")
            alg = named
        keys = self._keys[alg]
        for key in keys[:-1]:  # keys still accepted in a rotation: a mismatch tries the next
            try:
                return self._decode_with(token, alg, key)
            except _WrongKey:
                continue
        return self._decode_with(token, alg, keys[-1])

    def _decode_with(self, token: str, alg: str, key: Any) -> Claims:
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise TokenInvalid("the token's algorithm is not accepted") from None
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenInvalid("token is not yet valid") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenInvalid(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _WrongKey("token signature or format is invalid") from None
        except jwt.PyJWTError:
            raise TokenInvalid("token signature or format is invalid") from None
        return _claims(payload)


def estimated_key_bits(key: str) -> float:
    """The key's length times the Shannon entropy of its characters' frequencies.

    It sees how few characters a key repeats, not sequences or words, so it only catches
    keys that are obviously typed; for a random key it is close to the real entropy.
    """
    return sum(n * math.log2(len(key) / n) for n in Counter(key).values())


def refuse_weak_key(name: str, key: str) -> None:
    """Raise KeyConfigError if a configured HMAC key is the public dev key or obviously typed."""
    if key == DEV_JWT_SECRET:
        raise KeyConfigError(
            f"{name} is the published development key, with which anyone can sign tokens: "
            "make a real one with `openssl rand -hex 32`"
        )
    bits = estimated_key_bits(key)
    if bits < MIN_KEY_ENTROPY_BITS:
        raise KeyConfigError(
            f"{name} is not random enough: its characters give an estimated {bits:.0f} bits "
            f"of entropy where at least {MIN_KEY_ENTROPY_BITS} are needed (a random key from "
            "`openssl rand -hex 32` gives about 240)"
        )


def pem_blocks(text: str) -> list[str]:
    """Each PEM block in `text` (several keys may be given, one after the other)."""
    return _PEM_BLOCK.findall(text) or [text]


_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.+?-----END [A-Z0-9 ]+-----", re.DOTALL)


def _stream_claim(payload: dict[str, Any], name: str) -> frozenset[str] | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise TokenInvalid(f"{name!r} must be a list of strings")
    return frozenset(s.strip().lower() for s in value)


def _claims(payload: dict[str, Any]) -> Claims:
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenInvalid("'sub' must be a non-empty string")
    if not all(fits_routing_key(stream, sub) for stream in CATALOG):
        raise TokenInvalid("'sub' is too long for a routing key")
    exp = payload.get("exp")
    if not isinstance(exp, int | float):
        raise TokenInvalid("'exp' must be a number")
    perms = payload.get("permissions", [])
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise TokenInvalid("'permissions' must be a list of strings")
    return Claims(
        sub=sub,
        exp=int(exp),
        permissions=frozenset(perms),
        streams=_stream_claim(payload, "streams"),
        publish=_stream_claim(payload, "publish"),
        raw=MappingProxyType(payload),  # shared by every request that remembers the token
    )


def issue_token(
    sub: str,
    key: str,
    *,
    algorithm: str = "HS256",
    ttl: float = 3600,
    permissions: Iterable[str] = (),
    streams: Iterable[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token (for tools, tests and dev mode; production tokens come from your IdP)."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl)}
    if permissions:
        payload["permissions"] = list(permissions)
    if streams is not None:
        payload["streams"] = list(streams)
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    if extra:
        payload.update(extra)
    return jwt.encode(payload, key, algorithm=algorithm)
