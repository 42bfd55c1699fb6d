"""The `wschat` command: `wschat serve` runs the chat under uvicorn."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from infra.settings import get_settings

H11_MAX_HEAD = 16 * 1024
WS_MAX_LINE = 1024 * 1024


def _serve(args: argparse.Namespace) -> int:
    # h11 refuses request heads over 16 KiB with a 400. The WebSocket layer re-parses the
    # upgrade request with its own 8 KiB line limit, and uvicorn mishandles a line over that
    # (the client hangs), so let it accept whatever h11 let through. Read at import time.
    os.environ.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", str(WS_MAX_LINE))
    import uvicorn

    from infra.log_redaction import log_config

    settings = get_settings()
    uvicorn.run(
        "handler.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        reload=args.reload,
        http="h11",
        h11_max_incomplete_event_size=H11_MAX_HEAD,
        log_config=log_config(settings.log_level),
        log_level=settings.log_level,
        # WebSocket safety: frames over our own limit are refused by the protocol layer
        # (close 1009) before they are buffered, the inbound queue is bounded, and
        # compression (a CPU and memory amplifier) is off unless asked for.
        ws="websockets-sansio",
        ws_max_size=settings.max_message_bytes,
        ws_max_queue=16,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wschat", description="A FastAPI WebSocket chat.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the chat under uvicorn")
    serve.add_argument("--host", help="interface to bind (default: WSCHAT_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: WSCHAT_PORT, 8000)")
    serve.add_argument("--reload", action="store_true", help="restart when code changes")
    serve.set_defaults(run=_serve)

    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
