"""The `wschat` command: `wschat serve` runs the chat under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import handler.check as check_module
from handler.emulate.gateway import EmulatorConfig
from infra.settings import Settings, SettingsError, get_settings

if TYPE_CHECKING:
    from handler.local.protocols import ChatServerConfig

H11_MAX_HEAD = 16 * 1024
WS_MAX_LINE = 1024 * 1024


def _serve(args: argparse.Namespace) -> int:
    _allow_long_request_lines()
    from auth.errors import AuthConfigError
    from auth.factory import build_authenticator

    settings = get_settings()
    if args.workers > 1 and not settings.redis_url:
        print(
            f"wschat: --workers {args.workers} needs WSCHAT_REDIS_URL: workers share rooms "
            "through Redis (in memory, each worker would have rooms of its own)",
            file=sys.stderr,
        )
        return 2
    try:
        # Fail fast, with a readable message, on bad auth settings. The app builds its own.
        build_authenticator(settings.auth_config(), warn=False)
    except AuthConfigError as error:
        print(f"wschat: {error}", file=sys.stderr)
        return 2
    with _shared_metrics(args.workers):
        _serve_app(args, settings)
    return 0


@contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, each writes its metrics to files in one directory, which any
    worker's /metrics adds up (prometheus-client's multiprocess mode). The directory must be
    set before the workers import prometheus-client, and start empty: a fresh one per run,
    removed after it. A directory the user set is used as it is."""
    from handler.local.metrics import MULTIPROCESS_DIR

    if workers <= 1 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="wschat-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def _serve_app(args: argparse.Namespace, settings: Settings) -> None:
    from handler.local.protocols import serve

    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    serve(server_config(settings, host, port, reload=args.reload, workers=args.workers))


def server_config(settings: Settings, host: str, port: int, **options: Any) -> ChatServerConfig:
    """uvicorn's configuration for `wschat serve` (bench/idle_memory.py runs it in process)."""
    from handler.local.log_redaction import log_config
    from handler.local.protocols import ChatServerConfig

    return ChatServerConfig(
        "handler.local.service:create_local_app",
        factory=True,
        host=host,
        port=port,
        h11_max_incomplete_event_size=H11_MAX_HEAD,
        handshake_timeout=settings.handshake_timeout,
        max_pending_handshakes=settings.max_pending_handshakes,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        log_config=log_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        # WebSocket safety: frames over our own limit are refused by the protocol layer
        # (close 1009) before they are buffered, the inbound queue is bounded, and
        # compression (a CPU and memory amplifier) is off unless asked for.
        ws_max_size=settings.max_message_bytes,
        ws_max_queue=16,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        **options,
    )


def _allow_long_request_lines() -> None:
    # h11 refuses request heads over 16 KiB with a 400. The WebSocket layer re-parses the
    # upgrade request with its own 8 KiB line limit, and uvicorn mishandles a line over that
    # (the client hangs), so let it accept whatever h11 let through. websockets reads the
    # variable when it is first imported: for worker processes, which start afresh; and set
    # here too, since this process may have imported it already (`wschat check`'s module).
    import websockets.http11

    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(WS_MAX_LINE))
    websockets.http11.MAX_LINE_LENGTH = int(os.environ["WEBSOCKETS_MAX_LINE_LENGTH"])


def _emulate(args: argparse.Namespace) -> int:
    _allow_long_request_lines()
    from handler.emulate import authorizer_identity_sources, build_emulator
    from handler.emulate.gateway import MAX_FRAME_BYTES, QuietPlumbing
    from handler.local.log_redaction import log_config
    from handler.local.protocols import ChatServerConfig, serve

    settings = get_settings()
    config = EmulatorConfig(
        stage=args.stage,
        authorizer=args.authorizer,
        identity_sources=authorizer_identity_sources() if args.authorizer else (),
        idle_timeout=args.idle_timeout,
        max_duration=args.max_duration,
    )
    emulator, stop = build_emulator(config, args.host, args.port, args.dynamodb_endpoint)
    logging.getLogger("uvicorn.access").addFilter(QuietPlumbing(config))
    print(
        f"API Gateway emulator: ws://{args.host}:{args.port}/{args.stage}?room=...&token=...",
        file=sys.stderr,
    )
    try:
        serve(
            ChatServerConfig(
                emulator.app(),
                host=args.host,
                port=args.port,
                h11_max_incomplete_event_size=H11_MAX_HEAD,
                handshake_timeout=settings.handshake_timeout,
                max_pending_handshakes=settings.max_pending_handshakes,
                log_config=log_config(settings.log_level, settings.log_format),
                ws_max_size=MAX_FRAME_BYTES,
                ws_per_message_deflate=False,
            )
        )
    finally:
        stop()
    return 0


def parse_duration(text: str) -> int:
    """Seconds in `90`, `90s`, `15m`, `1h` or `2d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 2d")
    return int(number) * units[unit]


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"bad number of seconds {text!r}")
    return seconds


def _check(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(
        check_module.run(
            args.url, args.token, credential_in=args.credential_in, timeout=args.timeout
        )
    )


def _chat(args: argparse.Namespace) -> int:
    import asyncio

    from handler.client.terminal import chat

    options = {"room_in": args.room_in} if args.room_in else {}
    if args.token_in:
        options["token_in"] = args.token_in
    token = args.token or os.environ.get("WSCHAT_TOKEN") or "wschat-chat"
    try:
        return asyncio.run(chat(args.url, args.room, token, **options))
    except KeyboardInterrupt:
        return 130


def _token(args: argparse.Namespace) -> int:
    import time

    import jwt

    from auth.jwt_config import MIN_SECRET_BYTES
    from infra.settings import split_list

    settings = get_settings()
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else ""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        print(f"wschat: set WSCHAT_JWT_SECRET (at least {MIN_SECRET_BYTES} bytes)", file=sys.stderr)
        return 2
    try:
        ttl = parse_duration(args.ttl)
    except argparse.ArgumentTypeError as error:
        print(f"wschat: {error}", file=sys.stderr)
        return 2
    now = int(time.time())
    claims: dict[str, object] = {"sub": args.sub, "iat": now, "exp": now + ttl}
    if args.name:
        claims[settings.jwt_name_claim] = args.name
    if args.room:
        try:
            claims[settings.jwt_rooms_claim] = room_grants(args.room)
        except ValueError as error:
            print(f"wschat: --room: {error}", file=sys.stderr)
            return 2
    audience = args.aud or ",".join(split_list(settings.jwt_audience)[:1])
    if audience:
        claims["aud"] = audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    print(jwt.encode(claims, secret, algorithm="HS256"))
    return 0


def room_grants(specs: Sequence[str]) -> dict[str, list[str]]:
    """`--room support-*=read,write --room news=read` as a rooms claim. Raises ValueError."""
    from auth.rooms import Grants

    claim: dict[str, list[str]] = {}
    for spec in specs:
        pattern, sep, rights = spec.partition("=")
        if not sep or not pattern:
            raise ValueError(f"{spec!r}: use PATTERN=read,write")
        claim[pattern] = [right.strip() for right in rights.split(",") if right.strip()]
    Grants.from_claim(claim)  # the verifier's own check
    return claim


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wschat", description="A FastAPI WebSocket chat.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the chat under uvicorn")
    serve.add_argument("--host", help="interface to bind (default: WSCHAT_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: WSCHAT_PORT, 8000)")
    serve.add_argument("--reload", action="store_true", help="restart when code changes")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing rooms (above 1 needs WSCHAT_REDIS_URL)",
    )
    serve.set_defaults(run=_serve)

    emulate = commands.add_parser(
        "emulate", help="run the Lambda handlers behind a local API Gateway WebSocket emulator"
    )
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=3001)
    emulate.add_argument(
        "--stage", default=EmulatorConfig.stage, help="URL path of the WebSocket API"
    )
    emulate.add_argument("--dynamodb-endpoint", help="a real DynamoDB instead of moto's server")
    emulate.add_argument(
        "--authorizer",
        action="store_true",
        help="put the REQUEST authorizer in front of $connect, as a stage with `connectAuth: "
        "authorizer` does (its identity sources from serverless.yml: ?token= only); without "
        "it $connect authenticates every credential form, as serverless.yml's default",
    )
    emulate.add_argument(
        "--idle-timeout", type=float, default=EmulatorConfig.idle_timeout, help="seconds (10 min)"
    )
    emulate.add_argument(
        "--max-duration", type=float, default=EmulatorConfig.max_duration, help="seconds (2 h)"
    )
    emulate.set_defaults(run=_emulate)

    check = commands.add_parser(
        "check",
        help="run the contract's essentials against a deployment; exit 0 if all pass",
        description="URL: ws://127.0.0.1:8000 (wschat serve), ws://127.0.0.1:3001/local "
        "(wschat emulate), ws://127.0.0.1:3001 (serverless offline), or "
        "wss://API.execute-api.REGION.amazonaws.com/STAGE",
    )
    check.add_argument("url", help="where clients connect")
    check.add_argument("--token", help="a credential the deployment accepts (JWT mode)")
    check.add_argument(
        "--token-in",
        dest="credential_in",
        choices=("header", "subprotocol", "query"),
        default="header",
        help="how to send the credential: an Authorization header (default), the `bearer` "
        "subprotocol pair, or ?token= (an API Gateway authorizer reads only that)",
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=check_module.TIMEOUT,
        help=f"seconds the whole run may take (default {check_module.TIMEOUT:g}; each check "
        f"has at most {check_module.CHECK_TIMEOUT:g})",
    )
    check.set_defaults(run=_check)

    chat = commands.add_parser(
        "chat",
        help="join a room from this terminal: lines typed are sent, the room's are printed",
        description="URL as for `wschat check`. Reconnects, resumes and resends as the Python "
        "client does (docs/clients.md); end of input (Ctrl-D) leaves.",
    )
    chat.add_argument("url", help="where clients connect")
    chat.add_argument("room", help="the room to join")
    chat.add_argument(
        "--token", help="the credential (default: WSCHAT_TOKEN; token mode accepts any)"
    )
    chat.add_argument("--token-in", choices=("header", "subprotocol", "query"))
    chat.add_argument(
        "--room-in",
        choices=("path", "query"),
        help="path: /items/ROOM/ws (wschat serve; the default for a URL without a path); "
        "query: ?room=ROOM (API Gateway, wschat emulate, serverless offline)",
    )
    chat.set_defaults(run=_chat)

    token = commands.add_parser("token", help="mint an HS256 token with WSCHAT_JWT_SECRET")
    token.add_argument("--sub", required=True, help="subject: the user's stable id")
    token.add_argument("--name", help="display name (the WSCHAT_JWT_NAME_CLAIM claim)")
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 2d (default 1h)")
    token.add_argument("--aud", help="audience (default: WSCHAT_JWT_AUDIENCE, if set)")
    token.add_argument(
        "--room",
        action="append",
        metavar="PATTERN=RIGHTS",
        help="a room grant for WSCHAT_ROOM_POLICY=claims, e.g. 'support-*=read,write'; repeat "
        "for more (the WSCHAT_JWT_ROOMS_CLAIM claim)",
    )
    token.set_defaults(run=_token)

    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except SettingsError as error:  # a bad WSCHAT_* value: say which, like a bad argument
        print(f"wschat: {error}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    raise SystemExit(main())
