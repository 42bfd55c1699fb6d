"""What a warm Lambda container keeps between invocations, in one object.

Settings, the AWS clients, a chat core per Management API endpoint, the authenticator and the
HTTP app are built on first use and reused by later invocations. `runtime()` is the
container's one instance; `reset_runtime()` forgets it (and the settings), as a cold start
would: the tests and the emulator call it after changing the environment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from auth.base import Authenticator
from auth.refresh import BlockingCheck
from auth.rooms import RoomPolicy, build_room_policy
from handler.chat.core import ChatCore
from handler.chat.ports import Broadcast, Delivery
from infra.aws.connections import DynamoConnections
from infra.aws.delivery import ManagementApiDelivery, management_endpoint
from infra.aws.emf import EmfMetrics
from infra.aws.fanout import ChunkedBroadcast, FanoutQueue, FanoutWorker, Pacer
from infra.aws.management_api import ManagementApi
from infra.aws.message_log import DynamoMessageLog
from infra.aws.sealed_echo import EchoSeal
from infra.observability.log_json import JsonFormatter, log_context
from infra.settings import Settings, get_settings

T = TypeVar("T")

# The welcome may race API Gateway finishing the handshake (it answers 410 until `$connect`
# has returned), so its core retries a 410 for a while before the connection counts as gone.
WELCOME_GONE_ATTEMPTS = 6

# The fanout function's patience with a throttled or failing recipient, before the recipient
# goes into a delayed retry job (infra/aws/fanout.py): about 3.5 s of backoff over four attempts.
FANOUT_ATTEMPTS = 4
FANOUT_BACKOFF = 0.5

# Builds the core for an endpoint; `welcome` says whether it is the welcome's patient one.
CoreFactory = Callable[["AwsRuntime", str, bool], ChatCore]


@dataclass
class ServerlessRest:
    """What the HTTP function's REST endpoints use: the core on DynamoDB, delivering through
    the WebSocket API's Management endpoint (WSCHAT_APIGW_ENDPOINT)."""

    core: ChatCore
    authenticator: Authenticator

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """boto3 calls block: they run in worker threads, off the event loop."""
        # Here: the WebSocket handlers import this module, and never need starlette.
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(function, *args)


def dynamodb_core(runtime: AwsRuntime, endpoint: str, welcome: bool) -> ChatCore:
    """The serverless chat: the core on DynamoDB, delivering through the Management API, and
    through the fan-out queue for big rooms when WSCHAT_FANOUT_QUEUE_URL names one."""
    settings = runtime.settings
    delivery = ManagementApiDelivery(
        runtime.management_api(endpoint),
        settings.fanout_concurrency,
        gone_attempts=WELCOME_GONE_ATTEMPTS if welcome else 1,
        delivered=runtime.metrics.delivered,
    )
    connections = runtime.connections()
    broadcast: Callable[[ChatCore], Broadcast] | None = None
    # `serverless offline` has no SQS (and cannot resolve the queue's Ref): inline there.
    if settings.fanout_queue_url and not settings.is_offline:
        queue = runtime.fanout_queue()
        broadcast = lambda core: ChunkedBroadcast(  # noqa: E731
            core, connections, queue, settings.fanout_inline_max, settings.fanout_chunk
        )
    return runtime.chat_core(delivery, broadcast)


class AwsRuntime:
    """One container's state. Its methods build what they return on first call."""

    def __init__(self, settings: Settings, build_core: CoreFactory = dynamodb_core) -> None:
        self.settings = settings
        self._build_core = build_core
        # The HTTP function runs the core in a thread pool: build each thing once.
        self._lock = threading.RLock()
        self._dynamodb: Any = None
        self._lambda: Any = None
        self._management: dict[str, ManagementApi] = {}
        self.metrics = EmfMetrics()  # flushed at the end of each invocation
        self._fanout_queue: FanoutQueue | None = None
        self._fanout_worker: FanoutWorker | None = None
        self._cores: dict[tuple[str, bool], ChatCore] = {}
        self._authenticator: Authenticator | None = None
        self._policy: RoomPolicy | None = None
        self._web: Any = None
        self._http: Any = None
        key = settings.echo_key
        self._echo_seal = EchoSeal(key.get_secret_value() if key is not None else "")
        root = logging.getLogger()  # Lambda's, with its own handler
        root.setLevel(settings.log_level.upper())
        if settings.log_format == "json":
            for handler in root.handlers:
                handler.setFormatter(JsonFormatter())

    def endpoint_for(self, domain_name: str, stage: str, api_id: str) -> str:
        """The Management API endpoint of the API an event came from."""
        settings = self.settings
        return management_endpoint(
            domain_name,
            stage,
            api_id,
            settings.aws_region,
            settings.apigw_endpoint,
            settings.offline_ws_port if settings.is_offline else None,
        )

    def core(self, endpoint: str, welcome: bool = False) -> ChatCore:
        """The chat core delivering through `endpoint`. Its rate-limit state lives as long as
        the container does."""
        with self._lock:
            key = (endpoint, welcome)
            if key not in self._cores:
                self._cores[key] = self._build_core(self, endpoint, welcome)
            return self._cores[key]

    def connections(self) -> DynamoConnections:
        settings = self.settings
        return DynamoConnections(
            self.dynamodb(),
            settings.table,
            ttl_seconds=settings.connection_ttl_seconds,
            page_size=settings.room_page_size or None,
            seal=self._echo_seal,
        )

    def chat_core(
        self, delivery: Delivery, broadcast: Callable[[ChatCore], Broadcast] | None = None
    ) -> ChatCore:
        """A core on this container's DynamoDB, delivering through `delivery`."""
        settings = self.settings
        messages = DynamoMessageLog(self.dynamodb(), settings.table, settings.history_ttl_seconds)
        return ChatCore(
            self.connections(),
            messages,
            delivery,
            settings.limits(),
            policy=self.policy(),
            credentials=BlockingCheck(self.authenticator),
            broadcast=broadcast,
            metrics=self.metrics,
        )

    def fanout_queue(self) -> FanoutQueue:
        with self._lock:
            if self._fanout_queue is None:
                import boto3

                self._fanout_queue = FanoutQueue(
                    boto3.client("sqs", endpoint_url=self.settings.sqs_endpoint or None),
                    self.settings.fanout_queue_url,
                )
            return self._fanout_queue

    def fanout_worker(self) -> FanoutWorker:
        """The fanout function's worker: this container's share of the rate budget, posting
        through WSCHAT_APIGW_ENDPOINT."""
        with self._lock:
            if self._fanout_worker is None:
                settings = self.settings
                endpoint = self.configured_endpoint()
                pacer = Pacer(settings.fanout_rate / settings.fanout_workers)
                delivery = ManagementApiDelivery(
                    self.management_api(endpoint),
                    settings.fanout_concurrency,
                    attempts=FANOUT_ATTEMPTS,
                    backoff=FANOUT_BACKOFF,
                    pace=pacer.wait,
                    delivered=self.metrics.delivered,
                )
                self._fanout_worker = FanoutWorker(
                    self.connections(),
                    self.chat_core,
                    delivery,
                    self.fanout_queue(),
                    settings.fanout_chunk,
                )
            return self._fanout_worker

    def dynamodb(self) -> Any:
        with self._lock:
            if self._dynamodb is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=2,
                    read_timeout=5,
                    retries={"mode": "standard"},
                    # Every request is built by infra/aws/ (the table and its adapters):
                    # checking each against the service model costs CPU on every call and
                    # catches nothing.
                    parameter_validation=False,
                )
                endpoint = self.settings.dynamodb_endpoint or None
                self._dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, config=config)
            return self._dynamodb

    def management_api(self, endpoint: str) -> ManagementApi:
        with self._lock:
            if endpoint not in self._management:
                self._management[endpoint] = ManagementApi(
                    endpoint, self.settings.aws_region, self.settings.fanout_concurrency
                )
            return self._management[endpoint]

    def lambda_client(self) -> Any:
        """For invoking the welcome function asynchronously."""
        with self._lock:
            if self._lambda is None:
                import boto3

                settings = self.settings
                endpoint = settings.lambda_endpoint or None
                if endpoint is None and settings.is_offline:
                    endpoint = f"http://localhost:{settings.offline_lambda_port}"
                self._lambda = boto3.client("lambda", endpoint_url=endpoint)
            return self._lambda

    def authenticator(self) -> Authenticator:
        with self._lock:
            if self._authenticator is None:
                from auth.factory import build_authenticator

                self._authenticator = build_authenticator(self.settings.auth_config())
            return self._authenticator

    def policy(self) -> RoomPolicy:
        with self._lock:
            if self._policy is None:
                self._policy = build_room_policy(self.settings.room_policy, self.settings)
            return self._policy

    def configured_endpoint(self) -> str:
        """WSCHAT_APIGW_ENDPOINT: where the functions that post outside a WebSocket event
        (the HTTP function's REST, the fanout function) reach the sockets."""
        endpoint = self.settings.apigw_endpoint.rstrip("/")
        if not endpoint:
            raise RuntimeError("WSCHAT_APIGW_ENDPOINT must name the WebSocket API's endpoint")
        return endpoint

    def rest(self) -> ServerlessRest:
        """The REST backend of the HTTP function."""
        return ServerlessRest(self.core(self.configured_endpoint()), self.authenticator())

    def web_app(self) -> Any:
        """The HTTP function's app: page, health and REST (FastAPI)."""
        with self._lock:
            if self._web is None:
                from handler.web.app import create_app

                self._web = create_app(
                    self.settings,
                    rest=self.rest,
                    health=lambda: {"status": "ok", "transport": "lambda"},
                )
            return self._web

    def http_app(self) -> Any:
        """The HTTP function: the app behind Mangum."""
        with self._lock:
            if self._http is None:
                from mangum import Mangum

                # API Gateway invokes per request: no lifespan to run.
                self._http = Mangum(self.web_app(), lifespan="off")
            return self._http


@cache
def runtime() -> AwsRuntime:
    """This container's runtime, built on first use."""
    return AwsRuntime(get_settings())


def reset_runtime() -> None:
    """Forget the runtime and the settings, as a cold start would."""
    runtime.cache_clear()
    get_settings.cache_clear()


def entry_point(handle: Callable[[Any, Any], T]) -> Callable[..., T]:
    """A Lambda entry point: its log lines carry the invocation's request id and, on a
    WebSocket route, the connection id (infra/observability/log_json.py), and what it counted
    is written out as metrics when it returns (infra/aws/emf.py)."""

    def invoked(event: Any, context: Any = None) -> T:
        try:
            with log_context(**_invocation_fields(event, context)):
                return handle(event, context)
        finally:
            runtime().metrics.flush()

    return invoked


def _invocation_fields(event: Any, context: Any) -> dict[str, str]:
    fields = {}
    request_id = getattr(context, "aws_request_id", None)
    if isinstance(request_id, str):
        fields["request_id"] = request_id
    request = event.get("requestContext") if isinstance(event, Mapping) else None
    connection_id = request.get("connectionId") if isinstance(request, Mapping) else None
    if isinstance(connection_id, str):
        fields["connection_id"] = connection_id
    return fields
