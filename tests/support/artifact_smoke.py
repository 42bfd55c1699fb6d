"""Run inside the unpacked Lambda artifact by a clean Python 3.12 that has only boto3 besides:
import every handler and invoke it with the real-shaped events in tests/events.

Prints one JSON object with what happened; tests/test_packaging.py asserts on it.
"""

import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

events = Path(sys.argv[1])


def load(name: str, **context: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((events / f"{name}.json").read_text())
    event["requestContext"].update(context)
    return event


from handler.aws import websocket  # noqa: E402

report: dict[str, Any] = {"fastapi_loaded_by_ws_path": "fastapi" in sys.modules}

from handler.aws import authorizer  # noqa: E402

verdict = authorizer.handler(load("authorizer"))
report["authorizer"] = verdict["policyDocument"]["Statement"][0]["Effect"]
report["connect"] = websocket.connect(load("connect"))
report["connect_other"] = websocket.connect(load("connect", connectionId="other"))
report["message"] = websocket.default(load("message"))
report["disconnect"] = websocket.disconnect(load("disconnect"))
report["malformed"] = websocket.default({"body": "no context"})["statusCode"]

from handler.aws import http  # noqa: E402

http_event = {
    "version": "2.0",
    "routeKey": "$default",
    "rawPath": "/healthz",
    "rawQueryString": "",
    "headers": {"host": "abc.execute-api.us-east-1.amazonaws.com"},
    "requestContext": {
        "http": {
            "method": "GET",
            "path": "/healthz",
            "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.7",
            "userAgent": "smoke",
        },
        "domainName": "abc.execute-api.us-east-1.amazonaws.com",
        "stage": "$default",
        "requestId": "r1",
        "routeKey": "$default",
        "accountId": "123456789012",
        "apiId": "abc",
        "time": "23/Nov/2026:22:00:00 +0000",
        "timeEpoch": 1795466400000,
    },
    "isBase64Encoded": False,
}
response = http.handler(http_event, None)
report["http"] = {"status": response["statusCode"], "body": json.loads(response["body"])}
report["python"] = sys.version.split()[0]

# Every module of ours that the zip carries imports with what the zip carries: a module that
# needs uvicorn, redis or greenlet belongs in a package infra/deploy/build_lambda.py leaves out.
unimportable = []
for package in ("auth", "handler", "infra"):
    for module in pkgutil.walk_packages([package], prefix=f"{package}."):
        try:
            importlib.import_module(module.name)
        except Exception as error:  # each is reported; none stops the survey
            unimportable.append(f"{module.name}: {type(error).__name__}: {error}")
report["unimportable"] = unimportable
print(json.dumps(report))
