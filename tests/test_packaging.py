"""The deployable: `osls package` from serverless.yml, cfn-lint on its template, and the Lambda
zip run by a clean Python 3.12 with only boto3 beside it, against moto's server."""

from __future__ import annotations

import ast
import glob
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.aws import create_table, running_moto_server
from tests.support.servers import ROOT
from tests.support.tools import require, the_build_directory

TEMPLATE = ROOT / ".serverless" / "cloudformation-template-update-stack.json"
ARTIFACT = ROOT / "build" / "lambda.zip"
# Warnings cfn-lint raises on what the framework generates, accepted as harmless:
# W3005: a DependsOn that a Ref/GetAtt already implies.
ACCEPTED_WARNINGS = {"W3005"}


def python312() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    if found:
        return found[-1]
    return require("python3.12", "run the Lambda artifact under the runtime's Python")


# The first test may wait for serverless offline's module to let go of build/.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def packaged() -> Iterator[None]:
    require("npm", "install osls from package.json")
    with the_build_directory():
        subprocess.run(
            ["make", "package", "STAGE=ci"],
            cwd=ROOT,
            check=True,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
            capture_output=True,
            timeout=600,
        )
        yield


def test_osls_package_builds_the_stack(packaged: None) -> None:
    template = json.loads(TEMPLATE.read_text())
    resources = template["Resources"]
    types = {r["Type"] for r in resources.values()}
    assert {"AWS::DynamoDB::Table", "AWS::ApiGatewayV2::Api", "AWS::SQS::Queue"} <= types
    runtimes = {
        r["Properties"]["Runtime"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Function"
    }
    assert runtimes == {"python3.12"}
    table = resources["ChatTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    routes = {
        r["Properties"]["RouteKey"]
        for r in resources.values()
        if r["Type"] == "AWS::ApiGatewayV2::Route"
    }
    assert {"$connect", "$default", "$disconnect"} <= routes
    assert {"WebSocketUrl", "HttpUrl"} <= set(template["Outputs"])


def _resources() -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(TEMPLATE.read_text())["Resources"]
    return resources


def _of_type(kind: str) -> dict[str, Any]:
    return {name: r for name, r in _resources().items() if r["Type"] == kind}


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


# Each function's role, and every action it grants: what the function's code calls.
LOGS = {"logs:CreateLogStream", "logs:PutLogEvents"}
TABLE_ITEMS = {
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
    "dynamodb:ConditionCheckItem",
}
POSTS = {"execute-api:ManageConnections"}
ROLES = {
    "ChatFunctionRole": LOGS | TABLE_ITEMS | POSTS,
    "ConnectFunctionRole": LOGS | TABLE_ITEMS | POSTS | {"lambda:InvokeFunction"},
    "MessageFunctionRole": LOGS | TABLE_ITEMS | POSTS | {"sqs:SendMessage"},
    "AuthorizerFunctionRole": LOGS,
    "FanoutFunctionRole": LOGS
    | {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:DeleteItem"}
    | {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:SendMessage"}
    | POSTS,
}
FUNCTION_ROLES = {
    "HttpLambdaFunction": "MessageFunctionRole",
    "DefaultLambdaFunction": "MessageFunctionRole",
    "ConnectLambdaFunction": "ConnectFunctionRole",
    "DisconnectLambdaFunction": "ChatFunctionRole",
    "WelcomeLambdaFunction": "ChatFunctionRole",
    "AuthorizerLambdaFunction": "AuthorizerFunctionRole",
    "FanoutLambdaFunction": "FanoutFunctionRole",
}


def test_each_function_has_a_role_granting_what_its_code_calls(packaged: None) -> None:
    """Only $connect invokes the welcome, only the message path enqueues, the authorizer
    writes its logs and nothing else; every grant is on this stack's own resources."""
    resources = _resources()
    assert "IamRoleLambdaExecution" not in resources  # the framework's one role for all
    assert set(_of_type("AWS::IAM::Role")) == set(ROLES)
    functions = _of_type("AWS::Lambda::Function")
    assert {
        name: function["Properties"]["Role"]["Fn::GetAtt"][0]
        for name, function in functions.items()
    } == FUNCTION_ROLES
    for role, expected in ROLES.items():
        statements = [
            s
            for policy in resources[role]["Properties"]["Policies"]
            for s in policy["PolicyDocument"]["Statement"]
        ]
        granted = {a for s in statements for a in _actions(s)}
        assert granted == expected, role
        served = sorted(f for f, r in FUNCTION_ROLES.items() if r == role)
        for statement in statements:
            actions = _actions(statement)
            rendered = json.dumps(statement["Resource"])
            assert statement["Resource"] != "*" and ":*:*:*" not in rendered
            if any(a.startswith("dynamodb:") for a in actions):
                assert statement["Resource"] == [{"Fn::GetAtt": ["ChatTable", "Arn"]}]
            if any(a.startswith("sqs:") for a in actions):
                assert statement["Resource"] == [{"Fn::GetAtt": ["FanoutQueue", "Arn"]}]
            if "execute-api:ManageConnections" in actions:
                assert '{"Ref": "WebsocketsApi"}' in rendered
            if "lambda:InvokeFunction" in actions:
                assert rendered.endswith('function:wschat-ci-welcome"]]}]')
            if "logs:PutLogEvents" in actions:
                # Its own functions' log groups, one by one.
                groups = [r["Fn::Join"][1][-1] for r in statement["Resource"]]
                names = [f.removesuffix("LambdaFunction").lower() for f in served]
                assert sorted(groups) == [f":log-group:/aws/lambda/wschat-ci-{n}:*" for n in names]


def test_every_lambda_permission_is_scoped_to_this_stacks_api(packaged: None) -> None:
    """Without a SourceArn any API Gateway API, in any account, may invoke the function with
    an event of its choosing: a forged $connect with an authorizer context registers anyone."""
    permissions = _of_type("AWS::Lambda::Permission")
    assert {"ConnectLambdaPermissionWebsockets", "HttpLambdaPermissionHttpApi"} <= set(permissions)
    for name, permission in permissions.items():
        properties = permission["Properties"]
        assert properties["Principal"] == "apigateway.amazonaws.com", name
        assert "SourceArn" in properties, f"{name} has no SourceArn"
        parts = properties["SourceArn"]["Fn::Join"][1]
        api = "WebsocketsApi" if name.endswith("Websockets") else "HttpApi"
        assert parts[-2:] == [{"Ref": api}, "/*"], name
        assert parts[:3] == ["arn:", {"Ref": "AWS::Partition"}, ":execute-api:"], name


def test_connect_authenticates_every_credential_form_itself(packaged: None) -> None:
    """No authorizer by default: API Gateway would answer 401 for any credential its identity
    source does not name. $connect runs the same auth code as `wschat serve`."""
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in _of_type("AWS::ApiGatewayV2::Route").values()
    }
    assert routes["$connect"]["AuthorizationType"] == "NONE"
    assert "AuthorizerId" not in routes["$connect"]
    assert _of_type("AWS::ApiGatewayV2::Authorizer") == {}
    connect = _resources()["ConnectLambdaFunction"]["Properties"]["Environment"]["Variables"]
    assert connect["WSCHAT_AUTH"] == "token" and connect["WSCHAT_TOKENS"] == ""


def test_the_fanout_is_bounded_by_its_mapping_not_a_reservation(packaged: None) -> None:
    """A reservation fails the deploy on a new account (its quota keeps a minimum unreserved)
    and throttles the mapping, which starts five batches at once: the mapping's maximum
    concurrency bounds the workers, and they share WSCHAT_FANOUT_RATE among exactly that many."""
    functions = _of_type("AWS::Lambda::Function")
    for name, function in functions.items():
        assert "ReservedConcurrentExecutions" not in function["Properties"], name
    (mapping,) = _of_type("AWS::Lambda::EventSourceMapping").values()
    properties = mapping["Properties"]
    assert properties["FunctionName"] == {"Fn::GetAtt": ["FanoutLambdaFunction", "Arn"]}
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    workers = properties["ScalingConfig"]["MaximumConcurrency"]
    assert workers >= 2
    fanout = functions["FanoutLambdaFunction"]["Properties"]
    assert fanout["Environment"]["Variables"]["WSCHAT_FANOUT_WORKERS"] == str(workers)
    queue = _resources()["FanoutQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * fanout["Timeout"]


def test_a_throttled_fanout_job_is_not_dead_lettered_early(packaged: None) -> None:
    """The Lambda guide's floor for an SQS source: at least five receives before the
    dead-letter queue, so that throttled receives do not send a slice of a big room there."""
    queue = _resources()["FanoutQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["FanoutDeadLetterQueue", "Arn"]
    }
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 5


def test_the_table_is_encrypted_with_the_free_aws_owned_key(packaged: None) -> None:
    """`SSEEnabled: true` would switch to the AWS-managed KMS key, billed per request, for the
    same encryption at rest (docs/serverless.md)."""
    table = _resources()["ChatTable"]["Properties"]
    assert table.get("SSESpecification", {}).get("SSEEnabled", False) is False
    for queue in ("FanoutQueue", "FanoutDeadLetterQueue"):
        assert _resources()[queue]["Properties"]["SqsManagedSseEnabled"] is True


def test_osls_deploy_refuses_an_open_chat(packaged: None) -> None:
    """The default stage is an open chat (token auth, no tokens): `osls deploy` refuses it
    before it reaches AWS, and says how to go on."""
    done = subprocess.run(
        ["npx", "osls", "deploy", "--stage", "ci"],
        cwd=ROOT,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "would deploy an open chat" in output and "openChat: true" in output


def test_cfn_lint_finds_no_errors(packaged: None) -> None:
    # cfn-lint's console script: `python -m cfnlint` has no __main__ in cfn-lint 1.x, and
    # its empty output read as no findings.
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), "--format", "json", str(TEMPLATE)], capture_output=True, text=True
    )
    findings = json.loads(result.stdout)
    errors = [f for f in findings if f["Level"] == "Error"]
    unexpected = [f for f in findings if f["Rule"]["Id"] not in ACCEPTED_WARNINGS]
    assert errors == [] and unexpected == [], json.dumps(findings, indent=1)


def test_artifact_holds_our_packages_and_nothing_else(packaged: None) -> None:
    names = zipfile.ZipFile(ARTIFACT).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {"handler", "auth", "infra", "fastapi", "mangum", "jwt", "pydantic_core"} <= tops
    for unwanted in ("tests", ".venv", "node_modules", "boto3", "botocore", "uvicorn", "moto"):
        assert unwanted not in tops
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert any(n.endswith("x86_64-linux-gnu.so") and "cpython-312" in n for n in names)


# What the Lambda runtime provides beside the zip: boto3 and what it depends on.
RUNTIME_PROVIDES = {"boto3", "botocore", "urllib3", "s3transfer", "jmespath", "dateutil", "six"}
OURS = ("auth", "handler", "infra")


def _imports(source: str) -> Iterator[str]:
    """Every module a module imports, anywhere in it (a function's own imports too), but those
    only a type checker reads (`if TYPE_CHECKING:`)."""
    tree = ast.parse(source)
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_nothing_in_the_zip_imports_code_outside_it(packaged: None) -> None:
    """The zip is made of whole packages (infra/deploy/build_lambda.py). Every import in a
    module of ours that it carries names a module of ours that it carries too, or something
    the zip, the runtime or the standard library has."""
    archive = zipfile.ZipFile(ARTIFACT)
    names = archive.namelist()
    ours = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in names
        if name.startswith(tuple(f"{top}/" for top in OURS)) and name.endswith(".py")
    }
    tops = {name.split("/", 1)[0].removesuffix(".py") for name in names}
    outside = []
    for name in names:
        if name.endswith(".py") and name.startswith(tuple(f"{top}/" for top in OURS)):
            for module in _imports(archive.read(name).decode()):
                top = module.split(".")[0]
                if top in OURS:
                    if module not in ours:
                        outside.append(f"{name}: {module}")
                elif top not in tops | RUNTIME_PROVIDES | sys.stdlib_module_names:
                    outside.append(f"{name}: {module}")
    assert ours >= {"handler.aws.websocket", "handler.web.app", "infra.aws.connections"}
    assert not ours & {"handler.local", "infra.redis", "infra.memory", "infra.local_aws"}
    assert outside == []


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    with running_moto_server() as url:
        yield url


def test_clean_python312_imports_and_invokes_every_handler(
    packaged: None, moto_server: str, tmp_path: Path
) -> None:
    python = python312()
    venv = ROOT / "build" / "py312-boto3"
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "boto3"],
            check=True,
            capture_output=True,
        )
    unpacked = tmp_path / "artifact"
    zipfile.ZipFile(ARTIFACT).extractall(unpacked)
    aws_env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    create_table(
        boto3.client(
            "dynamodb",
            endpoint_url=moto_server,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        ),
        "wschat-smoke",
    )
    env = {
        "PATH": os.environ["PATH"],
        **aws_env,
        "WSCHAT_TABLE": "wschat-smoke",
        "WSCHAT_DYNAMODB_ENDPOINT": moto_server,
        "WSCHAT_APIGW_ENDPOINT": moto_server,
    }
    # Run the script as `-c` so the artifact (the working directory) is first on sys.path.
    smoke = (ROOT / "tests" / "support" / "artifact_smoke.py").read_text()
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-s", "-c", smoke, str(ROOT / "tests" / "events")],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["python"].startswith("3.12")
    assert report["unimportable"] == []
    assert report["fastapi_loaded_by_ws_path"] is False
    assert report["authorizer"] == "Allow"
    assert report["connect"] == report["connect_other"] == {"statusCode": 200}
    assert report["message"] == report["disconnect"] == {"statusCode": 200}
    assert report["malformed"] == 400
    assert report["http"] == {"status": 200, "body": {"status": "ok", "transport": "lambda"}}


def test_osls_package_builds_a_missing_or_stale_artifact_itself(packaged: None) -> None:
    # A fresh clone has no zip: `osls package` (and deploy, and offline start) must build it,
    # and build it again when what goes into it changed, so that a stale zip never ships.
    stamp = ARTIFACT.with_name("lambda.zip.fingerprint")

    def package() -> str:
        done = subprocess.run(
            ["npx", "osls", "package", "--stage", "ci"],
            cwd=ROOT,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    ARTIFACT.unlink()
    stamp.unlink()
    assert "MB zipped" in package() and ARTIFACT.exists()
    assert "up to date" in package()
    stamp.write_text("what an older tree would have had")
    assert "MB zipped" in package()
