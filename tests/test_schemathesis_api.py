"""schemathesis over the station's OpenAPI schema, logged in: every response it gets is
declared (status code, content type, body schema) and none is a server error.

Runs on the fake hardware (``acquisition.service.fakes``), so hold and arm calls are
answered like the real station's without rendering images. The endless event stream
is left out (its 200 and 401 are tested in test_service_api), and so is logout, which
would end the session the run uses.
"""

import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from acquisition.service.app import create_app
from acquisition.service.fakes import FakeHardware, FakePipeline
from acquisition.service.runtime import Runtime

_rt = Runtime(tempfile.mkdtemp(prefix="rsa-schemathesis-"), FakeHardware(), FakePipeline())
_rt.store.add_user("root", "root-password", "admin")
_TOKEN = _rt.store.login("root", "root-password")
_rt.register(
    "root", {"patient_id": "P-1", "patient_name": "Doe^Jane", "region": "lower"}
)  # something to find at /api/exams/1
app = create_app(_rt, own_runtime=False)

schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(
    path_regex=r"^/api/(events|logout)$"
)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_response_is_declared(case):
    case.call_and_validate(
        headers={"Cookie": f"rsa_session={_TOKEN}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
