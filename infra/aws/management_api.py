"""The API Gateway Management API, spoken directly: SigV4-signed requests over a pool of
kept-alive connections.

A fan-out is a thousand posts on a fraction of a vCPU, so the CPU of one post sets its pace.
boto3's client spends about half of it on machinery a post does not need (its event hooks,
building the request from the service model, the response parser): signing with botocore's
own SigV4 signer and sending with urllib3, both already in the Lambda runtime, costs about
0.55x as much (bench/lambda_fanout.py, docs/performance.md). The Management API has two
calls worth the trouble and a stable wire format: POST and DELETE on /@connections/{id}.

Answers are returned as HTTP statuses; what each means is the caller's policy
(infra/aws/delivery.py). A request that got no answer raises `NoAnswer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:  # imported when the first client is made: not on the handlers' cold import
    from botocore.credentials import Credentials

USER_AGENT = "wschat/0.1 (Management API fan-out)"
# The signing name of the Management API (what boto3's client signs for as well).
SERVICE = "execute-api"


class NoAnswer(Exception):
    """No HTTP answer at all: refused, reset, timed out. A post may still have arrived.
    Its message names what happened (urllib3's error), never the request."""


class ManagementApi:
    """POST and DELETE on /@connections/{id} of one endpoint; thread-safe."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        pool_size: int,
        credentials: Credentials | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._credentials = credentials
        self._region = region or _region_of(self.endpoint)
        self._path = urlsplit(self.endpoint).path
        import urllib3

        self._pool = urllib3.connection_from_url(
            self.endpoint,
            maxsize=pool_size,
            # One more try for a connection that could not be made or was found dead before
            # the request went out (as botocore's client does); nothing else: a post that
            # may have arrived is retried, or not, by the caller's policy.
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0, other=0),
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )

    def post(self, connection_id: str, data: bytes) -> int:
        return self._request("POST", connection_id, data)

    def delete(self, connection_id: str) -> int:
        return self._request("DELETE", connection_id, b"")

    def _signing_credentials(self) -> Credentials:
        """Found on first use, as boto3's clients do, through the same chain: Lambda's
        environment, a profile, a role."""
        if self._credentials is None:
            import botocore.session
            from botocore.exceptions import NoCredentialsError

            self._credentials = botocore.session.get_session().get_credentials()
            if self._credentials is None:
                raise NoCredentialsError()
        return self._credentials

    def _request(self, method: str, connection_id: str, body: bytes) -> int:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from urllib3.exceptions import HTTPError

        # A connection id is opaque (API Gateway's end in "="): every byte of it is encoded.
        resource = f"/@connections/{quote(connection_id, safe='')}"
        request = AWSRequest(method=method, url=self.endpoint + resource, data=body)
        request.headers["User-Agent"] = USER_AGENT
        # Frozen per request: refreshable credentials (an assumed role) renew themselves here.
        frozen: Any = self._signing_credentials().get_frozen_credentials()
        SigV4Auth(frozen, SERVICE, self._region).add_auth(request)
        try:
            response = self._pool.urlopen(
                method, self._path + resource, body=body, headers=dict(request.headers.items())
            )
        except HTTPError as error:
            reason = getattr(error, "reason", None) or error  # MaxRetryError wraps the cause
            raise NoAnswer(type(reason).__name__) from error
        return int(response.status)


def _region_of(endpoint: str) -> str:
    """The region an AWS endpoint names (https://{api}.execute-api.{region}.amazonaws.com).
    Any other endpoint is a local stand-in, which does not check the signature's region."""
    labels = (urlsplit(endpoint).hostname or "").split(".")
    if len(labels) >= 5 and labels[1] == SERVICE:
        return labels[2]
    return "us-east-1"
