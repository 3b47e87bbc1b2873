import base64
import secrets
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from realtime_shared.auth import (
    KeyConfigError,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenVerifier,
    issue_token,
)
from realtime_shared.settings import DEV_JWT_SECRET, RealtimeSettings

pytestmark = pytest.mark.unit

SECRET = "s" * 32


def verifier(**kwargs: object) -> TokenVerifier:
    return TokenVerifier(algorithms=kwargs.pop("algorithms", ["HS256"]), secret=SECRET, **kwargs)  # type: ignore[arg-type]


def test_valid_token_gives_claims() -> None:
    token = issue_token(
        "alice", SECRET, permissions=["notification.manage"], streams=["Chat", "notifications"]
    )
    claims = verifier().verify(token)
    assert claims.sub == "alice"
    assert claims.has("notification.manage")
    assert claims.may_hold("chat") and not claims.may_hold("ssh")


def test_missing_token() -> None:
    with pytest.raises(TokenMissing):
        verifier().verify(None)
    with pytest.raises(TokenMissing):
        verifier().verify("")


def test_expired_token() -> None:
    with pytest.raises(TokenExpired):
        verifier().verify(issue_token("alice", SECRET, ttl=-10))


def test_not_yet_valid_token() -> None:
    token = issue_token("alice", SECRET, extra={"nbf": int(time.time()) + 600})
    with pytest.raises(TokenInvalid, match="not yet valid"):
        verifier().verify(token)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    v = verifier(audience="realtime", issuer="idp")
    assert v.verify(issue_token("a", SECRET, audience="realtime", issuer="idp")).sub == "a"
    with pytest.raises(TokenInvalid, match="audience"):
        v.verify(issue_token("a", SECRET, audience="other", issuer="idp"))
    with pytest.raises(TokenInvalid, match="issuer"):
        v.verify(issue_token("a", SECRET, audience="realtime", issuer="evil"))
    with pytest.raises(TokenInvalid):
        v.verify(issue_token("a", SECRET))


def test_wrong_algorithm_is_refused() -> None:
    token = issue_token("alice", SECRET * 2, algorithm="HS512")
    with pytest.raises(TokenInvalid, match="algorithm"):
        verifier().verify(token)


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(TokenInvalid):
        verifier().verify(token)
    with pytest.raises(KeyConfigError):
        TokenVerifier(algorithms=["none"], secret=SECRET)


def test_wrong_signature_and_garbage_are_invalid() -> None:
    with pytest.raises(TokenInvalid):
        verifier().verify(issue_token("alice", "x" * 32))
    with pytest.raises(TokenInvalid):
        verifier().verify("not.a.token")


@pytest.mark.parametrize("missing", ["sub", "exp"])
def test_exp_and_sub_are_required(missing: str) -> None:
    payload = {"sub": "alice", "exp": int(time.time()) + 60}
    del payload[missing]
    with pytest.raises(TokenInvalid):
        verifier().verify(jwt.encode(payload, SECRET, algorithm="HS256"))


@pytest.mark.parametrize("sub", ["", "x" * 300])
def test_unusable_sub_is_invalid(sub: str) -> None:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(TokenInvalid):
        verifier().verify(token)


def test_hostile_sub_is_kept_verbatim() -> None:
    assert verifier().verify(issue_token("a.b#*%ü", SECRET)).sub == "a.b#*%ü"


def test_short_hmac_keys_are_refused_with_a_clear_error() -> None:
    with pytest.raises(KeyConfigError, match="at least 32 bytes"):
        TokenVerifier(algorithms=["HS256"], secret="short")


def test_no_secret_refuses_to_start_unless_dev() -> None:
    with pytest.raises(KeyConfigError, match="JWT_SECRET"):
        TokenVerifier.from_settings(RealtimeSettings(_env_file=None))  # type: ignore[call-arg]
    dev = TokenVerifier.from_settings(RealtimeSettings(_env_file=None, dev=True))  # type: ignore[call-arg]
    assert dev.algorithms == ["HS256"]


def test_algorithms_come_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_ALGORITHMS", "HS256, HS512")
    assert RealtimeSettings(_env_file=None).jwt_algorithms == ["HS256", "HS512"]  # type: ignore[call-arg]


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    priv = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    pub = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return priv, pub


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
    ],
)
def test_public_key_algorithms(alg: str, make_key: object) -> None:
    priv, pub = _pem(make_key())  # type: ignore[operator]
    v = TokenVerifier(algorithms=[alg], public_key=pub)
    assert v.verify(issue_token("alice", priv, algorithm=alg)).sub == "alice"
    with pytest.raises(KeyConfigError, match="JWT_PUBLIC_KEY"):
        TokenVerifier(algorithms=[alg])


def test_public_key_is_never_used_as_an_hmac_secret() -> None:
    priv, pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    v = TokenVerifier(algorithms=["RS256", "HS256"], secret=SECRET, public_key=pub)
    with pytest.raises(TokenInvalid):
        v.verify(issue_token("mallory", "p" * 32, algorithm="HS256"))
    assert v.verify(issue_token("alice", priv, algorithm="RS256")).sub == "alice"


def test_an_unusable_public_key_refuses_to_start() -> None:
    with pytest.raises(KeyConfigError, match="RS256"):
        TokenVerifier(algorithms=["RS256"], public_key="-----BEGIN PUBLIC KEY-----\nnope\n")


def test_a_rotation_accepts_the_previous_public_key_too() -> None:
    old_priv, old_pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    new_priv, new_pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    v = TokenVerifier(algorithms=["RS256"], public_key=new_pub + old_pub)  # new key first
    assert v.verify(issue_token("alice", new_priv, algorithm="RS256")).sub == "alice"
    assert v.verify(issue_token("bob", old_priv, algorithm="RS256")).sub == "bob"
    other_priv, _ = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(TokenInvalid, match="signature"):
        v.verify(issue_token("mallory", other_priv, algorithm="RS256"))
    with pytest.raises(TokenExpired):  # an old key's token is still checked for the rest
        v.verify(issue_token("bob", old_priv, algorithm="RS256", ttl=-10))


def test_rsa_and_ec_keys_side_by_side_each_verify_their_own_algorithm() -> None:
    rsa_priv, rsa_pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ec_priv, ec_pub = _pem(ec.generate_private_key(ec.SECP256R1()))
    v = TokenVerifier(algorithms=["RS256", "ES256"], public_key=rsa_pub + "\n" + ec_pub)
    assert v.verify(issue_token("alice", rsa_priv, algorithm="RS256")).sub == "alice"
    assert v.verify(issue_token("bob", ec_priv, algorithm="ES256")).sub == "bob"


def test_a_damaged_or_foreign_key_in_a_rotation_refuses_to_start() -> None:
    _, new_pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    _, old_pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    lines = old_pub.splitlines()
    damaged = "\n".join(lines[:2] + lines[3:])  # one base64 line lost in a copy and paste
    with pytest.raises(KeyConfigError, match="key 2 of 2"):
        TokenVerifier(algorithms=["RS256"], public_key=new_pub + damaged)
    _, ec_pub = _pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(KeyConfigError, match=r"key 2 of 2 .* RS256"):
        TokenVerifier(algorithms=["RS256"], public_key=new_pub + ec_pub)
    _, p384_pub = _pem(ec.generate_private_key(ec.SECP384R1()))  # ES256 is P-256 only
    with pytest.raises(KeyConfigError, match="key 2 of 3"):
        TokenVerifier(algorithms=["ES256", "RS256"], public_key=ec_pub + p384_pub + new_pub)


def test_a_private_key_is_refused_as_the_public_key() -> None:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(KeyConfigError, match="private key"):
        TokenVerifier(algorithms=["RS256"], public_key=private)


def test_an_unusable_previous_secret_refuses_to_start() -> None:
    with pytest.raises(KeyConfigError, match="JWT_PREVIOUS_SECRETS"):
        verifier(previous_secrets=["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 someone@host"])


def test_claims_of_a_remembered_token_cannot_be_changed_by_one_caller() -> None:
    v = verifier(cache_size=8)
    token = issue_token("alice", SECRET)
    with pytest.raises(TypeError):
        v.verify(token).raw["sub"] = "mallory"  # type: ignore[index]
    assert v.verify(token).raw["sub"] == "alice"


def test_a_rotation_accepts_previous_hmac_secrets_too() -> None:
    old, older = "o" * 32, "p" * 32
    v = verifier(previous_secrets=[old, older])
    for key in (SECRET, old, older):
        assert v.verify(issue_token("alice", key)).sub == "alice"
    with pytest.raises(TokenInvalid, match="signature"):
        v.verify(issue_token("mallory", "m" * 32))
    with pytest.raises(TokenExpired):
        v.verify(issue_token("alice", older, ttl=-10))


def test_a_short_previous_secret_refuses_to_start() -> None:
    with pytest.raises(KeyConfigError, match="JWT_PREVIOUS_SECRETS"):
        verifier(previous_secrets=["short"])


def test_previous_secrets_come_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    new, old, older = (secrets.token_hex(32) for _ in range(3))
    monkeypatch.setenv("JWT_SECRET", new)
    monkeypatch.setenv("JWT_PREVIOUS_SECRETS", old + ", " + older)
    settings = RealtimeSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.previous_jwt_secrets() == [old, older]
    assert old not in repr(settings)
    v = TokenVerifier.from_settings(settings)
    assert v.verify(issue_token("alice", older)).sub == "alice"
    monkeypatch.setenv("JWT_PREVIOUS_SECRETS", "")
    assert RealtimeSettings(_env_file=None).previous_jwt_secrets() == []  # type: ignore[call-arg]


def test_an_empty_audience_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_AUDIENCE", "")
    monkeypatch.setenv("JWT_ISSUER", "")
    settings = RealtimeSettings(_env_file=None, dev=True)  # type: ignore[call-arg]
    assert settings.jwt_audience is None
    assert settings.jwt_issuer is None


def test_with_several_algorithms_an_unlisted_one_is_refused() -> None:
    v = TokenVerifier(algorithms=["HS256", "HS512"], secret=SECRET * 2)
    assert v.verify(issue_token("alice", SECRET * 2, algorithm="HS512")).sub == "alice"
    with pytest.raises(TokenInvalid, match="algorithm"):
        v.verify(issue_token("alice", SECRET * 2, algorithm="HS384"))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_still_expires_at_its_exp() -> None:
    clock = Clock()
    v = verifier(cache_size=8, clock=clock)
    token = issue_token("alice", SECRET, ttl=60, permissions=["notification.manage"])
    assert v.verify(token).has("notification.manage")
    assert v.verify(token).sub == "alice"  # remembered

    clock.now += 61
    with pytest.raises(TokenExpired):
        v.verify(token)


def test_a_remembered_token_gets_the_configured_leeway() -> None:
    clock = Clock()
    v = verifier(cache_size=8, clock=clock, leeway=30)
    token = issue_token("alice", SECRET, ttl=60)
    v.verify(token)
    clock.now += 80
    assert v.verify(token).sub == "alice"
    clock.now += 20
    with pytest.raises(TokenExpired):
        v.verify(token)


def test_a_refused_token_is_refused_every_time() -> None:
    v = verifier(cache_size=8)
    forged = issue_token("alice", "f" * 32)
    for _ in range(2):
        with pytest.raises(TokenInvalid):
            v.verify(forged)


def test_the_memory_of_verified_tokens_is_bounded() -> None:
    clock = Clock()
    v = verifier(cache_size=2, clock=clock)
    tokens = [issue_token(user, SECRET, ttl=60) for user in ("a", "b", "c")]
    for token in tokens:
        v.verify(token)
    clock.now += 61
    # The oldest was forgotten, so PyJWT checks it again, on the real clock: still valid.
    assert v.verify(tokens[0]).sub == "a"
    with pytest.raises(TokenExpired):
        v.verify(tokens[2])  # remembered: checked on the (advanced) clock


def configured(**values: object) -> RealtimeSettings:
    """Settings as an operator's variables give them (no `.env`, nothing else of the caller's)."""
    values.setdefault("jwt_previous_secrets", None)
    values.setdefault("jwt_public_key", None)
    return RealtimeSettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["JWT_SECRET", "JWT_PREVIOUS_SECRETS", "JWT_PUBLIC_KEY"])
def test_dev_mode_refuses_to_start_beside_a_configured_key(name: str) -> None:
    key = secrets.token_hex(32)
    values = {"jwt_secret": None, name.lower(): key}
    with pytest.raises(KeyConfigError, match=f"--dev .* unset {name}, or start without --dev"):
        TokenVerifier.from_settings(configured(dev=True, **values))


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"jwt_secret": DEV_JWT_SECRET}, "JWT_SECRET"),
        (
            {"jwt_secret": secrets.token_hex(32), "jwt_previous_secrets": DEV_JWT_SECRET},
            "a key in JWT_PREVIOUS_SECRETS",
        ),
    ],
)
def test_the_published_dev_key_is_refused_outside_dev_mode(
    values: dict[str, str], name: str
) -> None:
    with pytest.raises(KeyConfigError, match=f"^{name} is the published development key"):
        TokenVerifier.from_settings(configured(**values))


@pytest.mark.parametrize("typed", ["k" * 32, "ab" * 16, "abcd" * 8, "-+" * 20])
def test_a_key_of_a_few_repeated_characters_is_refused(typed: str) -> None:
    rule = r"not random enough: .* estimated \d+ bits of entropy where at least 80 are needed"
    with pytest.raises(KeyConfigError, match=f"^JWT_SECRET is {rule}"):
        TokenVerifier.from_settings(configured(jwt_secret=typed))
    with pytest.raises(KeyConfigError, match=f"^a key in JWT_PREVIOUS_SECRETS is {rule}"):
        TokenVerifier.from_settings(
            configured(jwt_secret=secrets.token_hex(32), jwt_previous_secrets=typed)
        )


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: secrets.token_hex(16),  # the shortest random key the length rule admits
        lambda: secrets.token_hex(32),  # openssl rand -hex 32
        lambda: base64.b64encode(secrets.token_bytes(32)).decode(),  # openssl rand -base64 32
        lambda: secrets.token_urlsafe(32),
    ],
    ids=["hex-16", "hex-32", "base64-32", "urlsafe-32"],
)
def test_random_keys_are_accepted(make_key: object) -> None:
    for _ in range(300):  # the estimate varies from key to key: none of them may fall short
        key = make_key()  # type: ignore[operator]
        verifier = TokenVerifier.from_settings(configured(jwt_secret=key))
        assert verifier.verify(issue_token("alice", key)).sub == "alice"


def test_a_short_key_is_still_refused_for_its_length_first() -> None:
    with pytest.raises(KeyConfigError, match="at least 32 bytes"):
        TokenVerifier.from_settings(configured(jwt_secret="kkkk"))


def test_the_publish_claim_limits_publishing_and_must_be_a_list_of_streams() -> None:
    verifier = TokenVerifier(algorithms=["HS256"], secret=SECRET)
    limited = verifier.verify(issue_token("alice", SECRET, extra={"publish": [" Chat "]}))
    assert limited.may_publish("chat") and not limited.may_publish("ssh")
    assert verifier.verify(issue_token("alice", SECRET)).may_publish("ssh")  # no claim: any
    with pytest.raises(TokenInvalid, match="'publish' must be a list of strings"):
        verifier.verify(issue_token("alice", SECRET, extra={"publish": "chat"}))
