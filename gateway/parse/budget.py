"""How much of a stranger's message the parser is willing to unpack (DESIGN principle 12).

Past a budget the message is still read: its headers (From, Subject, Message-ID, so it threads and
is answered normally), its text as far as read; the parts not unpacked are recorded as a defect and
as one refused attachment entry that says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParseBudget:
    max_parts: int = 500  # MIME parts (containers and leaves) unpacked per message
    max_depth: int = 50  # nesting of multipart/* and message/* parts
    max_headers: int = 2000  # header fields kept per part (From, Subject, Message-ID... always kept)
    max_header_bytes: int = 1 << 20  # header bytes kept per part
    max_defects: int = 200  # defects listed per message; the rest are counted
    max_container_output_bytes: int = 64 << 20  # bytes unpacked from winmail.dat (TNEF) per message
    max_processing_seconds: float = 20.0  # wall time for one message; the rest is not unpacked
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)  # tests may control it


DEFAULT_BUDGET = ParseBudget()


class Deadline:
    """The processing-time budget of one message, started when parsing starts."""

    def __init__(self, budget: ParseBudget) -> None:
        self._clock = budget.clock
        self._seconds = budget.max_processing_seconds
        self._end = self._clock() + budget.max_processing_seconds

    def expired(self) -> bool:
        return self._clock() > self._end

    @property
    def reason(self) -> str:
        return f"processing time budget of {self._seconds:g} s used up"
