"""Run inside the unpacked Lambda artifact by a clean Python 3.12 that has only boto3 besides:
import every handler and invoke it with the real-shaped events in tests/events.

Prints one JSON object with what happened; tests/test_packaging.py asserts on it.
"""

import json
import sys
from pathlib import Path

events = Path(sys.argv[1])


def load(name, **context):
    event = json.loads((events / f"{name}.json").read_text())
    event["requestContext"].update(context)
    return event


from handler import lambda_ws  # noqa: E402

report = {"fastapi_loaded_by_ws_path": "fastapi" in sys.modules}

from auth import lambda_authorizer  # noqa: E402

report["authorizer"] = lambda_authorizer.handler(load("authorizer"))["policyDocument"]["Statement"][
    0
]["Effect"]
report["connect"] = lambda_ws.connect(load("connect"))
report["connect_other"] = lambda_ws.connect(load("connect", connectionId="other"))
report["message"] = lambda_ws.default(load("message"))
report["disconnect"] = lambda_ws.disconnect(load("disconnect"))
report["malformed"] = lambda_ws.default({"body": "no context"})["statusCode"]

from handler import lambda_http  # noqa: E402

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
response = lambda_http.handler(http_event, None)
report["http"] = {"status": response["statusCode"], "body": json.loads(response["body"])}
report["python"] = sys.version.split()[0]
print(json.dumps(report))
