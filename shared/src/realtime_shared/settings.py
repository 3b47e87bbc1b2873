"""Settings every process shares, from the environment (and `.env`) at construction time only.

Any setting `X` may instead be given as `X_FILE`, the path of a file holding its value (as
the official postgres and rabbitmq images read their secrets), so a secret mounted as a file
never has to sit in the environment. Dev mode is not a setting: only the `--dev` flag, or
code that constructs settings with `dev=True`, turns it on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_EXCHANGE = "realtime"
DEFAULT_INBOUND_EXCHANGE = "realtime.inbound"
"""Where the edge publishes client messages on interactive streams, for backends to consume."""

DEV_JWT_SECRET = "realtime-dev-secret-not-for-production!"
"""Used only with `--dev`: a fixed, public key so local tools can mint tokens."""

KEY_VARIABLES = ("JWT_SECRET", "JWT_PREVIOUS_SECRETS", "JWT_PUBLIC_KEY")
"""The variables that hold keys: dev mode refuses to start beside any of them."""

FILE_SUFFIX = "_FILE"
"""`JWT_SECRET_FILE=/run/secrets/jwt` gives JWT_SECRET the file's content."""

CommaList = Annotated[list[str], NoDecode]


def split_commas(value: object) -> object:
    """Accept ``"a,b"`` from the environment as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class FileVariablesSource(PydanticBaseSettingsSource):
    """Each setting's `<VAR>_FILE`, from the environment or `.env`: the file's content, one
    trailing newline stripped (what `echo` and editors add), is the value.

    Setting both `X` and `X_FILE` is an error rather than a silent choice, and an error never
    includes a file's content. An empty variable counts as unset, as it does for the keys.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._variables: dict[str, str | None] = {}
        for source in sources:  # lowest priority first: the environment overrides `.env`
            if isinstance(source, EnvSettingsSource):
                self._variables.update({k.upper(): v for k, v in source.env_vars.items()})

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = field_name.upper()
        path = self._variables.get(variable + FILE_SUFFIX)
        if not path:
            return None, field_name, False
        if self._variables.get(variable):
            raise SettingsError(
                f"{variable} and {variable}{FILE_SUFFIX} are both set: set only one of them"
            )
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(
                f"{variable}{FILE_SUFFIX}: cannot read {path} ({exc.strerror or exc})"
            ) from None
        except UnicodeDecodeError:
            raise SettingsError(f"{variable}{FILE_SUFFIX}: {path} is not UTF-8 text") from None
        return content.removesuffix("\n"), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class RealtimeSettings(BaseSettings):
    """The contract's shared variables; each service subclasses this."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    amqp_url: str = DEFAULT_AMQP_URL
    realtime_exchange: str = DEFAULT_EXCHANGE
    jwt_secret: SecretStr | None = None
    jwt_previous_secrets: SecretStr | None = Field(
        default=None,
        description="comma-separated HMAC keys still accepted while JWT_SECRET rotates",
    )
    jwt_algorithms: CommaList = Field(default_factory=lambda: ["HS256"])
    jwt_public_key: SecretStr | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    _dev: bool = PrivateAttr(default=False)

    def __init__(self, *, dev: bool = False, **values: Any) -> None:
        # Not a field, so no source (a `DEV=1` in the environment or `.env`) can reach it.
        super().__init__(**values)
        self._dev = dev

    @property
    def dev(self) -> bool:
        """Development mode: the public dev key, the demo page, `/dev/token`."""
        return self._dev

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = FileVariablesSource(settings_cls, dotenv_settings, env_settings)
        # Above the variables themselves only so that an empty `X=` gives way to `X_FILE`:
        # both set is an error.
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    @field_validator(
        "jwt_secret",
        "jwt_previous_secrets",
        "jwt_public_key",
        "jwt_audience",
        "jwt_issuer",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `JWT_AUDIENCE=` (as compose passes an unset variable) means unset, not "check
        # for an empty audience"; other settings may use "" on purpose, so only these.
        return None if value == "" else value

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        return split_commas(value)

    def effective_jwt_secret(self) -> str | None:
        """The key tokens are signed with: in dev mode always the public dev key, never a
        configured one (`TokenVerifier.from_settings` refuses dev mode beside one)."""
        if self.dev:
            return DEV_JWT_SECRET
        return None if self.jwt_secret is None else self.jwt_secret.get_secret_value()

    def previous_jwt_secrets(self) -> list[str]:
        value = self.jwt_previous_secrets
        return [] if value is None else cast(list[str], split_commas(value.get_secret_value()))

    def configured_keys(self) -> list[str]:
        """The names of the KEY_VARIABLES that hold a key."""
        return [name for name in KEY_VARIABLES if getattr(self, name.lower()) is not None]


SettingsT = TypeVar("SettingsT", bound=RealtimeSettings)


def _reason(error: ErrorDetails) -> str:
    """`EDGE_SEND_QUEUE: Input should be ...`: the variable and why, never the value."""
    loc = error["loc"]
    return f"{str(loc[0]).upper()}: {error['msg']}" if loc else error["msg"]


def load_settings(cls: type[SettingsT], prog: str, **values: Any) -> SettingsT:
    """`cls(**values)` on top of the environment; exit 2 if invalid, naming each variable and
    the reason in one line but never a value (pydantic's own message shows every input,
    secrets included, and a start-up error lands in logs)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        reasons = [_reason(error) for error in exc.errors(include_url=False, include_input=False)]
    except SettingsError as exc:
        reasons = [str(exc)]
    print(f"{prog}: invalid settings:", *(f"  {r}" for r in reasons), sep="\n", file=sys.stderr)
    raise SystemExit(2)


def add_process_arguments(parser: argparse.ArgumentParser, *, port: int) -> None:
    """The options every service process takes (the contract's `--host` and `--port`)."""
    parser.add_argument("--host", default="0.0.0.0", help="bind address (0.0.0.0)")
    parser.add_argument("--port", type=int, default=port, help=f"bind port ({port})")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development mode: the public dev key, /dev/token and the demo page; "
        "refuses to start while a JWT key is configured",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING... (LOG_LEVEL)")


def settings_from_args(cls: type[SettingsT], args: argparse.Namespace, prog: str) -> SettingsT:
    """The environment with the command line on top; exit 2, saying why, if invalid."""
    overrides: dict[str, Any] = {"dev": bool(args.dev)}
    if args.log_level:
        overrides["log_level"] = args.log_level.upper()
    return load_settings(cls, prog, **overrides)
