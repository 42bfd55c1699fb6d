"""Where a principal may go: the room policy (`WSCHAT_ROOM_POLICY`) and room grants.

Authentication says who; a room policy says which of `read` and `write` a principal holds in a
room. `open` (the seed's behaviour) grants both everywhere. `claims` reads the principal's
grants: room patterns mapped to rights, from a JWT claim (`WSCHAT_JWT_ROOMS_CLAIM`) or from a
`WSCHAT_TOKENS` entry. A custom policy plugs in as `package.module:factory`, like an
authenticator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from auth.errors import AuthConfigError, AuthError
from auth.plugins import load_factory

if TYPE_CHECKING:
    from auth.principal import Principal


class Right(StrEnum):
    READ = "read"  # join the room, receive its messages, read its history
    WRITE = "write"  # post to it


Rights = frozenset[Right]
ALL: Rights = frozenset(Right)
NONE: Rights = frozenset()
MAX_PATTERNS = 100


def rights_text(rights: Rights) -> str:
    """`read,write`, `read`, `write` or empty: how a connection record stores its rights."""
    return ",".join(right for right in Right if right in rights)


def rights_from_text(text: str) -> Rights:
    return frozenset(Right(part) for part in text.split(",") if part)


@dataclass(frozen=True, slots=True)
class Grants:
    """Room patterns and the rights each grants. `*` matches any run of characters; for a
    room, the most specific matching pattern decides (the most literal characters, then the
    fewest `*`); patterns equally specific grant only what they all grant."""

    patterns: tuple[tuple[str, Rights], ...]

    @classmethod
    def from_claim(cls, claim: object) -> Grants:
        """From a JWT claim such as `{"support-*": ["read", "write"], "news": ["read"]}`.
        Raises ValueError saying what is wrong."""
        if not isinstance(claim, Mapping) or len(claim) > MAX_PATTERNS:
            raise ValueError(f"must be an object of at most {MAX_PATTERNS} room patterns")
        patterns = []
        for pattern, rights in claim.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError("room patterns must be non-empty strings")
            if not isinstance(rights, list) or not all(r in ("read", "write") for r in rights):
                raise ValueError(f"{pattern!r} must map to a list of 'read' and 'write'")
            patterns.append((pattern, frozenset(Right(r) for r in rights)))
        return cls(tuple(patterns))

    @classmethod
    def from_spec(cls, spec: str) -> Grants:
        """From `WSCHAT_TOKENS` syntax: `support-*=read+write;news=read`."""
        claim: dict[str, list[str]] = {}
        for entry in filter(None, (part.strip() for part in spec.split(";"))):
            pattern, sep, rights = entry.partition("=")
            if not sep or not pattern.strip():
                raise ValueError(f"room grant {entry!r} must look like pattern=read+write")
            claim[pattern.strip()] = [r.strip() for r in rights.split("+") if r.strip()]
        return cls.from_claim(claim)

    def rights(self, room: str) -> Rights:
        best: tuple[int, int] | None = None
        granted = NONE
        for pattern, rights in self.patterns:
            if not _matches(pattern, room):
                continue
            stars = pattern.count("*")
            specificity = (len(pattern) - stars, -stars)
            if best is None or specificity > best:
                best, granted = specificity, rights
            elif specificity == best:
                granted = granted & rights
        return granted


def _matches(pattern: str, room: str) -> bool:
    """Whether `room` fits `pattern`, `*` matching any run of characters. Greedy with one
    backtrack point: at most len(pattern) * len(room) steps, whatever the pattern (a regular
    expression of many `*` could backtrack exponentially)."""
    p = r = 0
    star = mark = -1
    while r < len(room):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, r
            p += 1
        elif p < len(pattern) and pattern[p] == room[r]:
            p += 1
            r += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            r = mark
        else:
            return False
    return all(ch == "*" for ch in pattern[p:])


class RoomPolicy(Protocol):
    """Answers which rights a principal holds in a room. Must not block: it runs for every
    handshake, REST call and refresh."""

    def rights(self, principal: Principal, room: str) -> Rights: ...


class OpenPolicy:
    """Everyone reads and writes everywhere: the seed's behaviour, and the default."""

    def rights(self, principal: Principal, room: str) -> Rights:
        return ALL


class GrantsPolicy:
    """The principal's own grants decide; a principal with none may go nowhere."""

    def rights(self, principal: Principal, room: str) -> Rights:
        return principal.grants.rights(room) if principal.grants is not None else NONE


NOT_OPEN = "this credential does not open the room"


def readable(rights: Rights) -> Rights:
    """`rights`, if they let their principal into the room (`read`); else the AuthError (403)
    every way in answers with: the handshake on both transports, and the Lambda authorizer."""
    if Right.READ not in rights:
        raise AuthError(NOT_OPEN, status=403)
    return rights


def build_room_policy(spec: str, settings: object) -> RoomPolicy:
    """`open`, `claims`, or `package.module:factory` (called with the settings). Raises
    AuthConfigError with a message a user can act on."""
    if spec == "open":
        return OpenPolicy()
    if spec == "claims":
        return GrantsPolicy()
    policy = load_factory("WSCHAT_ROOM_POLICY", spec, "`open`, `claims`")(settings)
    if not callable(getattr(policy, "rights", None)):
        raise AuthConfigError(f"WSCHAT_ROOM_POLICY={spec!r} did not return a room policy")
    return policy  # type: ignore[no-any-return]
