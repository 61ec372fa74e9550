"""schemathesis against the service's own OpenAPI document, in process, as an authenticated user.

Stateless: every operation gets generated valid and invalid requests. Stateful: chains of calls
follow the links between operations (register -> log in -> refresh, create item -> read, update,
delete it; the item and user links are inferred by schemathesis from the response schemas, the
credential links are added here). Every response must be no 5xx, conform to its documented status
codes, content type, headers and schema, and every error must be problem details.

`FUZZ_EXAMPLES` sets the examples per operation (default 25; `make fuzz` runs 500).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st

from app.main import create_app
from tests.conftest import make_settings
from tests.fuzz.conftest import FuzzTarget, excluded_checks, problem_details_check

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
STATEFUL_SCENARIOS = max(10, EXAMPLES // 2)

# email-validator refuses special-use domains (`.test`, `.invalid`) that the `email` format allows;
# generate deliverable-looking addresses so the positive cases exercise the service, not the library.
schemathesis.openapi.format("email", st.from_regex(r"\A[a-z0-9]{1,24}@example\.(com|org|net)\Z"))


def _with_credential_links(document: dict[str, Any]) -> dict[str, Any]:
    """Links the service's document does not declare (finding: it should): the password a user
    registered with logs them in, and the refresh token of a login is spent at /auth/refresh."""
    document = copy.deepcopy(document)
    paths = document["paths"]
    paths["/api/v1/auth/register"]["post"]["responses"]["201"].setdefault("links", {})["LogIn"] = {
        "operationId": paths["/api/v1/auth/token"]["post"]["operationId"],
        "requestBody": {"username": "$request.body#/email", "password": "$request.body#/password"},
    }
    paths["/api/v1/auth/token"]["post"]["responses"]["200"].setdefault("links", {})["Refresh"] = {
        "operationId": paths["/api/v1/auth/refresh"]["post"]["operationId"],
        "requestBody": {"refresh_token": "$response.body#/refresh_token"},
    }
    return document


# The document is built without a database: only the routes and the model manifest matter here
# (models on: their names and inputs are in the document, as in the fuzzed app's).
OPENAPI = create_app(make_settings("sqlite+aiosqlite:///:memory:", ml_enabled=True)).openapi()
schema = schemathesis.openapi.from_dict(_with_credential_links(OPENAPI))
# Invalid data refused as too large is refused: a body past MAX_REQUEST_BODY_BYTES (1 MB) gets its
# 413 before it is read, whatever it holds (a bulk feedback form of more than its 1,000 items, each
# with long arrays, is both).
schema.config.checks.negative_data_rejection.expected_statuses = [
    *schema.config.checks.negative_data_rejection.expected_statuses,
    "413",
]

SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 25,  # the quick run is reproducible; `make fuzz` explores
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _check_kwargs(case: schemathesis.Case) -> dict[str, Any]:
    excluded = [getattr(schemathesis.checks, name) for name in excluded_checks(case.operation.label)]
    return {"additional_checks": [problem_details_check], "excluded_checks": excluded}


@schema.parametrize()
@SETTINGS
def test_stateless(case: schemathesis.Case, fuzz_target: FuzzTarget) -> None:
    # The probes of `ignored_auth` (the request again without, then with a wrong, credential) go
    # through the schema's own transport: the app's, not HTTP to a base URL the document lacks.
    case.operation.schema.app = fuzz_target.app
    case.call_and_validate(
        app=fuzz_target.app,
        headers=fuzz_target.headers_for(case.operation.path),
        **_check_kwargs(case),
    )


def test_stateful(limited_fuzz_target: FuzzTarget) -> None:
    """Rate limits on as shipped: every status (429 included) documented, every body its schema."""
    fuzz_target = limited_fuzz_target
    machine = schema.as_state_machine()

    class ServiceStateMachine(machine):  # type: ignore[misc,valid-type]
        def setup(self) -> None:
            # Each scenario starts from the same state, so a replayed scenario draws the same steps.
            fuzz_target.reset()

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            case.operation.schema.app = fuzz_target.app  # for `ignored_auth`'s probes (see above)
            return {
                "app": fuzz_target.app,
                "headers": fuzz_target.headers_for(case.operation.path),
            }

        def validate_response(
            self,
            response: Any,
            case: schemathesis.Case,
            additional_checks: Any = None,  # noqa: ARG002 - replaced by this suite's checks
            **kwargs: Any,
        ) -> None:
            checks = _check_kwargs(case)
            case.validate_response(
                response,
                additional_checks=checks["additional_checks"],
                excluded_checks=checks["excluded_checks"],
                transport_kwargs=kwargs,
            )

    ServiceStateMachine.run(
        settings=hypothesis.settings(
            SETTINGS,
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=8,
        )
    )
