"""wschat's Python client (docs/clients.md): `async with connect(url, room, ...) as room`."""

from handler.client.room import ClientError, Options, Room, connect

__all__ = ["ClientError", "Options", "Room", "connect"]
