"""What a warm Lambda container keeps between invocations, in one object.

Settings, the AWS clients, a chat core per Management API endpoint, the authenticator and the
HTTP app are built on first use and reused by later invocations. `runtime()` is the
container's one instance; `reset_runtime()` forgets it (and the settings), as a cold start
would: the tests and the emulator call it after changing the environment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from auth.base import Authenticator
from auth.refresh import BlockingCheck
from auth.rooms import RoomPolicy, build_room_policy
from handler.chat.core import ChatCore
from infra.apigw import ManagementApiDelivery, make_management_client, management_endpoint
from infra.dynamodb import DynamoConnections, DynamoMessageLog
from infra.settings import Settings, get_settings

T = TypeVar("T")

# The welcome may race API Gateway finishing the handshake (it answers 410 until `$connect`
# has returned), so its core retries a 410 for a while before the connection counts as gone.
WELCOME_GONE_ATTEMPTS = 6

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
    """The serverless chat: the core on DynamoDB, delivering through the Management API."""
    settings = runtime.settings
    delivery = ManagementApiDelivery(
        runtime.management_client(endpoint),
        settings.fanout_concurrency,
        gone_attempts=WELCOME_GONE_ATTEMPTS if welcome else 1,
    )
    connections = DynamoConnections(
        runtime.dynamodb(),
        settings.table,
        ttl_seconds=settings.connection_ttl_seconds,
        page_size=settings.room_page_size or None,
    )
    messages = DynamoMessageLog(runtime.dynamodb(), settings.table, settings.history_ttl_seconds)
    return ChatCore(
        connections,
        messages,
        delivery,
        settings.limits(),
        policy=runtime.policy(),
        credentials=BlockingCheck(runtime.authenticator),
    )


class AwsRuntime:
    """One container's state. Its methods build what they return on first call."""

    def __init__(self, settings: Settings, build_core: CoreFactory = dynamodb_core) -> None:
        self.settings = settings
        self._build_core = build_core
        # The HTTP function runs the core in a thread pool: build each thing once.
        self._lock = threading.RLock()
        self._dynamodb: Any = None
        self._lambda: Any = None
        self._management: dict[str, Any] = {}
        self._cores: dict[tuple[str, bool], ChatCore] = {}
        self._authenticator: Authenticator | None = None
        self._policy: RoomPolicy | None = None
        self._web: Any = None
        self._http: Any = None
        logging.getLogger().setLevel(settings.log_level.upper())  # Lambda's root logger

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

    def dynamodb(self) -> Any:
        with self._lock:
            if self._dynamodb is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=2,
                    read_timeout=5,
                    retries={"mode": "standard"},
                    # Every request is built by infra/dynamodb.py; checking each against the
                    # service model costs CPU on every call and catches nothing.
                    parameter_validation=False,
                )
                endpoint = self.settings.dynamodb_endpoint or None
                self._dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, config=config)
            return self._dynamodb

    def management_client(self, endpoint: str) -> Any:
        with self._lock:
            if endpoint not in self._management:
                self._management[endpoint] = make_management_client(
                    endpoint, self.settings.fanout_concurrency
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

                self._authenticator = build_authenticator(self.settings)
            return self._authenticator

    def policy(self) -> RoomPolicy:
        with self._lock:
            if self._policy is None:
                self._policy = build_room_policy(self.settings.room_policy, self.settings)
            return self._policy

    def rest(self) -> ServerlessRest:
        """The REST backend of the HTTP function."""
        endpoint = self.settings.apigw_endpoint
        if not endpoint:
            raise RuntimeError("WSCHAT_APIGW_ENDPOINT must name the WebSocket API's endpoint")
        return ServerlessRest(self.core(endpoint.rstrip("/")), self.authenticator())

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
