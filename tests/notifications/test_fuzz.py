"""Schemathesis fuzzes the API from its /openapi.json: no 5xx, every error in the contract body."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from support.notifications import start_process, stop_process, wait_ready_sync

pytestmark = pytest.mark.e2e  # a real service process

ERROR_CODES = {401, 403, 404, 405, 413, 422}
MAX_EXAMPLES = 30


@pytest.fixture
def api(database_url: str, amqp_url: str, exchange: str, tmp_path: Path) -> Iterator[Any]:
    log = tmp_path / "notifications.log"
    process, base_url = start_process(amqp_url, exchange, database_url, log)
    try:
        wait_ready_sync(process, base_url, log)
        yield schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    finally:
        stop_process(process)


def contract_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    body = response.json()
    assert response.status_code in ERROR_CODES, f"unexpected status {response.status_code}"
    assert body["success"] is False, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str), body
    return None


def test_api_never_fails_and_always_uses_the_error_body(
    api: Any, make_token: Callable[..., str]
) -> None:
    token = make_token("fuzz", permissions=["notification.manage"])
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) == 8

    for operation in operations:
        positive = operation.as_strategy(schemathesis.GenerationMode.POSITIVE)
        negative = operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)

        @given(case=positive | negative)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"},
                checks=[schemathesis.checks.not_a_server_error],
                additional_checks=[contract_error_body],
            )

        call()
