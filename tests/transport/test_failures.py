"""Which store failures are waited out: no answer or "temporarily unavailable" only."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from claudecluster.errors import EventStoreError, StoreUnavailableError
from claudecluster.transport.failures import store_failure


@pytest.mark.parametrize(
    "exc",
    [TimeoutError(), nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
     nats.errors.ConnectionClosedError(), nats.js.errors.NoStreamResponseError(),
     nats.js.errors.ServiceUnavailableError(code=503, description="temporarily unavailable")],
)  # fmt: skip
def test_no_answer_is_unavailable(exc: BaseException) -> None:
    failure = store_failure("cannot read CC_SESSIONS", exc)
    assert isinstance(failure, StoreUnavailableError)
    assert str(failure) == "cannot read CC_SESSIONS"


@pytest.mark.parametrize(
    "exc",
    [nats.js.errors.BadRequestError(code=400, description="bad request"),
     nats.js.errors.APIError(code=400, err_code=10054, description="message too large"),
     nats.errors.MaxPayloadError()],
)  # fmt: skip
def test_what_the_server_would_say_again_is_not(exc: BaseException) -> None:
    failure = store_failure("cannot store artifact k", exc)
    assert type(failure) is EventStoreError
