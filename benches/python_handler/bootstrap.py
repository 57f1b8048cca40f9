"""A minimal custom-runtime loop for handler.py: the Lambda Runtime API as AWS documents it.

Importing the handler (boto3 and its clients) is the init phase; then the loop polls
/invocation/next and posts each result or error.
"""

import json
import os
import sys
import traceback
import urllib.request

API = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}/2018-06-01/runtime"


def _post(path, doc):
    req = urllib.request.Request(f"{API}/{path}", data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


try:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import handler  # noqa: E402  (the init phase)
except Exception as exc:  # pragma: no cover - reported to the Runtime API
    _post("init/error", {"errorMessage": str(exc), "errorType": type(exc).__name__})
    raise

while True:
    with urllib.request.urlopen(f"{API}/invocation/next") as resp:
        request_id = resp.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(resp.read())
    try:
        result = handler.handler(event, None)
        _post(f"invocation/{request_id}/response", result)
    except Exception as exc:
        _post(f"invocation/{request_id}/error", {"errorMessage": str(exc), "errorType": type(exc).__name__,
                                                 "stackTrace": traceback.format_exc().splitlines()})
