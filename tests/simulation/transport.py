"""stripe-python's transport, in-process: every request the real client sends
(through the product's own gateway, its tries and its classification) goes
to the simulator's engine as a call, with no socket in between.

A request is where a simulated daemon may pause (`at Stripe`, `answer`;
before sending it pauses at the gateway's `stripe_try` failpoint) and where
the schedule's faults are decided: answered before anything runs (500, 429,
lock timeout, a connection refused), committed and then lost (500 after,
connection dropped, a timeout), still running at Stripe when the client
times out (`in_flight`), or fine. A request whose client is gone (timed out,
or its daemon crashed while the request was at Stripe) is not stopped: Stripe
finishes it on its own, later (the world decides when, within
STRIPE_ANSWERS_WITHIN of its start), and until then its key is taken, so a
same-key request gets 409. That is how an earlier attempt lands after a later
handling looked it up and found nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import urlsplit

import stripe
from requests.structures import CaseInsensitiveDict

from ledger.stripe.simulator.api import ApiRequest
from tests.simulation.scheduler import Crash

if TYPE_CHECKING:
    from ledger.stripe.simulator.engine import Call
    from tests.simulation.world import SimWorld

# The engine's own faults, scripted for one request: answered before executing
# (nothing done, nothing saved) or after it committed.
ENGINE_FAULTS: Final = ("500_before", "429", "lock_timeout", "500_after", "drop_after", "slow")
# The transport's own: the connection fails before the request is sent; or
# the client times out while Stripe is still executing the request, which
# finishes there later (a same-key request meanwhile gets 409).
REFUSED: Final = "refused"
IN_FLIGHT: Final = "in_flight"
FAULTS: Final = (*ENGINE_FAULTS, REFUSED, IN_FLIGHT)


def _connection_error(message: str) -> stripe.APIConnectionError:
    # As stripe-python's RequestsClient words it, and as retryable as it says.
    return stripe.APIConnectionError(  # type: ignore[no-untyped-call]
        f"Unexpected error communicating with Stripe. (Network error: {message})",
        should_retry=True,
    )


class InProcessStripe(stripe.HTTPClient):
    name = "stripe-sim-in-process"

    def __init__(self, world: SimWorld) -> None:
        super().__init__()
        self.world = world

    def request(  # type: ignore[override] # stripe-python's own clients return bytes too
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        world = self.world
        headers = headers or {}
        split = urlsplit(url)
        body = post_data.encode() if isinstance(post_data, str) else (post_data or b"")
        request = ApiRequest(
            method=method.upper(),
            path=split.path,
            query=split.query,
            body=body,
            authorization=headers.get("Authorization"),
            idempotency_key=headers.get("Idempotency-Key"),
            stripe_version=headers.get("Stripe-Version"),
        )
        what = f"{request.method} {request.path}"
        fault = world.draw_fault(request)
        # No pause of its own before sending: the gateway's `stripe_try`
        # failpoint is that pause, before it checks that the claim still
        # outlives the try (checking and sending are one step here).
        if fault == REFUSED:
            world.note(f"{what}: connection refused")
            raise _connection_error("ConnectionError: [Errno 111] Connection refused")
        if fault == IN_FLIGHT:
            call = world.send_to_stripe(request)
            # The client waits out its timeout (others act meanwhile), then gives up.
            world.sleep(world.settings.timeout_seconds)
            self._give_up(call, what)
        sent_at = world.clock.seconds()
        call = world.send_to_stripe(request, fault)
        try:
            world.yield_point(f"{what} at Stripe")
        except Crash:
            # A killed client does not stop the server: Stripe finishes the
            # call on its own, maybe after another daemon has looked it up.
            world.leave_at_stripe(call)
            raise
        late = world.clock.seconds() - sent_at > world.settings.timeout_seconds
        if late and world.still_at_stripe(call):
            self._give_up(call, what)
        response = world.finish_at_stripe(call)
        world.note(
            f"{what} key={request.idempotency_key or '-'} -> {response.status}"
            + (f" {response.body.get('id', '')}" if response.status == 200 else "")
            + (f" [{response.fault}]" if response.fault else "")
            + (" [late]" if late else "")
        )
        world.yield_point(f"answer to {what}")
        if response.drop:
            raise _connection_error(
                "ConnectionError: ('Connection aborted.', RemoteDisconnected("
                "'Remote end closed connection without response'))"
            )
        if response.delay_seconds > 0 or late:
            raise _connection_error("ReadTimeout: Read timed out.")
        answer: CaseInsensitiveDict[str] = CaseInsensitiveDict(response.headers)
        answer["Request-Id"] = response.request_id
        return json.dumps(response.body).encode(), response.status, answer

    def _give_up(self, call: Call, what: str) -> NoReturn:
        """The client timed out. Stripe may still be at the request: then it
        finishes it later, and a same-key retry meanwhile gets 409."""
        world = self.world
        at_stripe = world.still_at_stripe(call)
        world.note(
            f"{what} key={call.request.idempotency_key or '-'} -> timed out"
            + (", still at Stripe" if at_stripe else " (its answer lost)")
        )
        world.leave_at_stripe(call)
        world.yield_point(f"answer to {what}")
        raise _connection_error("ReadTimeout: Read timed out.")

    def close(self) -> None:
        pass
