"""The frequency ledger: the contacts a borrower received, counted where caps are enforced.

One Redis sorted set per customer holds the recent contacts on the channels some cap
watches: member `[channel, kind, debt, attempt id]` (JSON), score the (simulated) epoch
seconds it happened. Kinds:

* `attempt`  a call (or message) was dispatched;
* `inflight` the same attempt, until its outcome is known — an attempt that might still be
  answered counts against "answered" caps, so two processes can never both take the last slot;
* `answered` the attempt ended `delivered` (a conversation took place).

The ledger's version is kept in the same sorted set, as the member `#v` with the version,
negated, as its score: contacts are at epoch seconds (≥ 0), so no read or prune by time ever
meets it, and writing the contacts and the new version is one ZADD.

A transition that *decided* with the ledger carries the ledger version it read; apply.lua
refuses it (code 2) if any other transition wrote the ledger since, and the engine decides
again with the new ledger. A transition that writes the ledger bumps its version in the same
Lua call as the state: counting and enforcing are one atomic step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import orjson

LedgerKind = str  # "attempt" | "inflight" | "answered"
VERSION_MEMBER = "#v"  # the ledger's version (score: minus the version); not JSON


def member(channel: str, kind: LedgerKind, debt: str, attempt_id: str) -> str:
    """The ledger's member for one contact event."""
    return orjson.dumps([channel, kind, debt, attempt_id]).decode()


class Entry(msgspec.Struct, frozen=True, gc=False):
    channel: str
    kind: LedgerKind
    debt: str
    attempt_id: str
    at_s: float


@dataclass
class LedgerView:
    """A customer's ledger as read at `version` (0: empty)."""

    version: int = 0
    entries: list[Entry] = field(default_factory=list)

    @classmethod
    def parse(cls, version: int, flat: Iterable[tuple[bytes | str, float]]) -> LedgerView:
        entries = []
        for raw, score in flat:
            try:
                channel, kind, debt, aid = orjson.loads(raw)
            except (ValueError, TypeError):
                continue  # not ours: ignore rather than fail the batch
            entries.append(Entry(str(channel), str(kind), str(debt), str(aid), float(score)))
        return cls(version, entries)

    def count(
        self,
        channel: str,
        kind: LedgerKind,
        debt: str | None,
        since_s: float,
        until_s: float = float("inf"),
    ) -> int:
        """Events of `kind` on `channel` (for `debt`, or any debt when None) in [since, until)."""
        return sum(
            1
            for e in self.entries
            if e.kind == kind
            and e.channel == channel
            and (debt is None or e.debt == debt)
            and since_s <= e.at_s < until_s
        )
