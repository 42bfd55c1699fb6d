"""The serverless chat service: the core wired to DynamoDB and the Management API.

Everything is built on first use and reused by later invocations of a warm container.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from auth.base import Authenticator
from handler.core import ChatCore
from handler.service import limits_from
from infra.apigw import ManagementApiDelivery, make_management_client, management_endpoint
from infra.dynamodb import DynamoConnections, DynamoMessageLog
from infra.settings import Settings, get_settings


@lru_cache(maxsize=1)
def dynamodb_client() -> Any:
    import boto3
    from botocore.config import Config

    settings = get_settings()
    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard"})
    return boto3.client("dynamodb", endpoint_url=settings.dynamodb_endpoint or None, config=config)


@lru_cache(maxsize=8)
def management_client(endpoint: str) -> Any:
    return make_management_client(endpoint, get_settings().fanout_concurrency)


def endpoint_for(domain_name: str, stage: str, api_id: str) -> str:
    settings = get_settings()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
    return management_endpoint(
        domain_name, stage, api_id, region, settings.apigw_endpoint, settings.offline_ws_port
    )


def build_core(settings: Settings, dynamodb: Any, delivery: ManagementApiDelivery) -> ChatCore:
    connections = DynamoConnections(
        dynamodb,
        settings.table,
        ttl_seconds=settings.connection_ttl_seconds,
        page_size=settings.room_page_size or None,
    )
    messages = DynamoMessageLog(dynamodb, settings.table, settings.history_ttl_seconds)
    return ChatCore(connections, messages, delivery, limits_from(settings))


@lru_cache(maxsize=8)
def core_for(endpoint: str) -> ChatCore:
    """One core per Management API endpoint: its rate-limit state lives as long as the
    container does."""
    settings = get_settings()
    delivery = ManagementApiDelivery(management_client(endpoint), settings.fanout_concurrency)
    return build_core(settings, dynamodb_client(), delivery)


@dataclass
class ServerlessRest:
    """What the HTTP function's REST endpoints use: the core on DynamoDB, delivering through
    the WebSocket API's Management endpoint (WSCHAT_APIGW_ENDPOINT)."""

    core: ChatCore
    authenticator: Authenticator
    blocking = True  # boto3 calls: keep them off the event loop


@lru_cache(maxsize=1)
def rest_backend() -> ServerlessRest:
    from auth.factory import build_authenticator

    settings = get_settings()
    if not settings.apigw_endpoint:
        raise RuntimeError("WSCHAT_APIGW_ENDPOINT must name the WebSocket API's endpoint")
    return ServerlessRest(core_for(settings.apigw_endpoint), build_authenticator(settings))


@lru_cache(maxsize=8)
def welcome_core_for(endpoint: str) -> ChatCore:
    """The core the welcome runs on. The welcome may race API Gateway finishing the handshake,
    so a 410 is retried for a while before the connection counts as gone."""
    settings = get_settings()
    delivery = ManagementApiDelivery(
        management_client(endpoint), settings.fanout_concurrency, gone_attempts=6
    )
    return build_core(settings, dynamodb_client(), delivery)
