"""The DynamoDB of local runs (infra/local_aws/dynamodb.py): moto, over HTTP or in process."""

from __future__ import annotations

import secrets

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from infra.local_aws.dynamodb import send_in_process, start_dynamodb

CREDENTIALS = {
    "region_name": "us-east-1",
    "aws_access_key_id": "local",
    "aws_secret_access_key": "local",
    "config": Config(retries={"max_attempts": 1}),
}


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the client `start_dynamodb` makes the table with."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "local")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_a_client_sent_in_process_needs_no_server() -> None:
    """`wschat emulate` hands its handlers' DynamoDB calls to moto in its own process: the
    answers, errors included, are those of the server, which the calls no longer need."""
    table = f"local-{secrets.token_hex(4)}"
    dynamodb = start_dynamodb(None, table)
    client = boto3.client("dynamodb", endpoint_url=dynamodb.endpoint, **CREDENTIALS)
    over_http = boto3.client("dynamodb", endpoint_url=dynamodb.endpoint, **CREDENTIALS)
    send_in_process(client, dynamodb)
    item = {"pk": {"S": "room#a"}, "sk": {"S": "caf\u00e9 \u2615"}, "n": {"N": "1"}}
    client.put_item(TableName=table, Item=item)
    key = {"pk": item["pk"], "sk": item["sk"]}
    assert over_http.get_item(TableName=table, Key=key)["Item"] == item
    dynamodb.stop()

    assert client.get_item(TableName=table, Key=key)["Item"] == item
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        client.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(pk)")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_item(TableName=f"{table}-missing", Key=key)
    with pytest.raises(EndpointConnectionError):  # the server is gone
        over_http.get_item(TableName=table, Key=key)


def test_a_fault_of_moto_in_process_is_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's own bugs reach a client over HTTP as a 500 (retried, then a ClientError): the
    same in process, not moto's exception inside the handler."""
    from moto.dynamodb.models import DynamoDBBackend

    table = f"local-{secrets.token_hex(4)}"
    dynamodb = start_dynamodb(None, table)
    client = boto3.client("dynamodb", endpoint_url=dynamodb.endpoint, **CREDENTIALS)
    send_in_process(client, dynamodb)

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug in moto")

    monkeypatch.setattr(DynamoDBBackend, "get_item", broken)
    with pytest.raises(ClientError) as raised:
        client.get_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"S": "b"}})
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    dynamodb.stop()
