"""What a borrower (or an agent for them) changed through tongda, beside the upstream profile:
opt-out / opt-in per channel, and a hardship hold on collection while an agent is due.

Stored per customer in one Redis hash (`store.Keys.controls`), written by the inquiries desk
and the preferences API, read by the engine for every customer in a batch, and applied to
each notification's `PolicyContext` before a decision — so a "退订" stops the next SMS step of
a notification already in flight, not only of new ones.

Precedence (docs/CONTRACT.md): the borrower's own change wins over a profile whose
`updated_at` is older; a profile updated after the change decides again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from msgspec.structs import replace
from redis.asyncio import Redis

from services.router.state import PolicyContext
from services.router.store import Keys
from shared.contract.models import CHANNELS, Channel, PreferenceState
from shared.resp import execute

_HOLD = b"hold"
_PREF = b"pref:"


@dataclass(frozen=True, slots=True)
class Controls:
    prefs: Mapping[Channel, tuple[PreferenceState, float]] = field(default_factory=dict)
    hold_until: float | None = None
    hold_inquiry: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[bytes, bytes]) -> Controls | None:
        """From the hash as HGETALL returns it; None when empty. Unreadable fields are
        ignored (a hand-edited hash must not stop routing)."""
        if not raw:
            return None
        prefs: dict[Channel, tuple[PreferenceState, float]] = {}
        hold_until, hold_inquiry = None, None
        for k, v in raw.items():
            try:
                if k.startswith(_PREF):
                    ch, (state, at) = k[len(_PREF) :].decode(), v.decode().split("|", 1)
                    if ch in CHANNELS and state in ("opted_out", "opted_in"):
                        prefs[ch] = (cast(PreferenceState, state), float(at))
                elif k == _HOLD:
                    until, inquiry = v.decode().split("|", 1)
                    hold_until, hold_inquiry = float(until), inquiry
            except ValueError:
                continue
        return cls(prefs, hold_until, hold_inquiry)


def pref_field(channel: Channel) -> str:
    return f"pref:{channel}"


def pref_value(state: PreferenceState, at_s: float) -> str:
    return f"{state}|{at_s:.3f}"


def hold_value(until_s: float, inquiry_id: str) -> str:
    return f"{until_s:.3f}|{inquiry_id}"


HOLD_FIELD = _HOLD.decode()


def effective_opt_outs(
    profile_opted_out: Sequence[Channel],
    profile_at: float | None,
    prefs: Mapping[Channel, tuple[PreferenceState, float]],
) -> list[Channel]:
    """The channels opted out of: the profile's list, changed by each of the borrower's own
    choices that is not older than the profile."""
    out = set(profile_opted_out)
    for ch, (state, at) in prefs.items():
        if profile_at is not None and profile_at > at:
            continue  # the profile was updated after the borrower's change: it decides
        if state == "opted_out":
            out.add(ch)
        else:
            out.discard(ch)
    return [c for c in CHANNELS if c in out]


def apply_controls(ctx: PolicyContext, controls: Controls | None) -> PolicyContext:
    """The policy context with the borrower's current controls applied (idempotent: the
    profile's own list is kept aside the first time)."""
    base = ctx.profile_opted_out if ctx.profile_opted_out is not None else ctx.opted_out_channels
    if controls is None:
        if ctx.profile_opted_out is None and ctx.hold_until is None:
            return ctx
        return replace(ctx, opted_out_channels=list(base), hold_until=None)
    return replace(
        ctx,
        opted_out_channels=effective_opt_outs(base, ctx.profile_at, controls.prefs),
        profile_opted_out=list(base),
        hold_until=controls.hold_until,
    )


def controls_commands(keys: Keys, customer_ids: Sequence[str]) -> list[bytes]:
    """The packed reads of each customer's controls (to pipeline with other reads): each is
    `pack("HGETALL", key)`, written in one format (one per customer of every batch)."""
    out = []
    for c in customer_ids:
        key = keys.controls(c).encode()
        out.append(b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n" % (len(key), key))
    return out


def parse_controls(customer_ids: Sequence[str], replies: Sequence[object]) -> dict[str, Controls]:
    """The controls of each customer that has any, from the replies of controls_commands."""
    out = {}
    for cid, flat in zip(customer_ids, replies, strict=True):
        if isinstance(flat, Exception):
            raise flat
        # HGETALL: a flat list (RESP2) or a map (RESP3)
        raw = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))  # type: ignore[index]
        parsed = Controls.parse(raw)
        if parsed is not None:
            out[cid] = parsed
    return out


async def read_controls(
    redis: Redis, keys: Keys, customer_ids: Sequence[str]
) -> dict[str, Controls]:
    """The controls of each customer that has any; one round trip."""
    if not customer_ids:
        return {}
    return parse_controls(customer_ids, await execute(redis, controls_commands(keys, customer_ids)))
