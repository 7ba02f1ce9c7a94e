"""The sidecar's OpenAPI schema is its contract with clients: it matches the committed snapshot.

A deliberate change to an endpoint or a body regenerates the snapshot with
``.venv/bin/python tests/server/test_sidecar_openapi.py`` (and says so in the commit).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("openapi_snapshot.json")
VERSION = "<promptloop.__version__>"  # the snapshot does not pin the package's version


def current_schema() -> dict:
    """The app's ``/openapi.json`` (built with the tests' settings; it does not depend on them)."""
    from conftest import server_settings

    from promptloop.server import create_app

    settings = server_settings("/absent/policy", "/absent/adapter", "/absent/sd", "transformers")
    schema = create_app(settings).openapi()
    schema["info"]["version"] = VERSION
    return schema


def test_openapi_schema_is_unchanged():
    schema = current_schema()
    snapshot = json.loads(SNAPSHOT.read_text())
    assert schema == snapshot
    # and in the same order (paths, properties): the order the docs page shows
    assert json.dumps(schema) == json.dumps(snapshot)


def test_openapi_json_endpoint_serves_the_schema():
    from conftest import server_settings
    from fastapi.testclient import TestClient

    import promptloop
    from promptloop.server import create_app

    app = create_app(server_settings("/absent/policy", "/absent/adapter", "/absent/sd", "transformers"))
    served = TestClient(app).get("/openapi.json").json()  # no lifespan: nothing loads
    assert served["info"]["version"] == promptloop.__version__
    served["info"]["version"] = VERSION
    assert served == json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    SNAPSHOT.write_text(json.dumps(current_schema(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}")
