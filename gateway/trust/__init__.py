"""Sender trust: who really sent a message, decided once, at the edge, and carried as a `TrustVerdict`.

This room owns the reading of trusted relays' `Authentication-Results` and spam headers
(`upstream`), our own SPF, DKIM and DMARC checks through a budgeted, cached DNS resolver
(`resolver`, `checks`), the verdict itself (`verdict`, `assess`), and the policies later steps ask
it (`policy`: may this sender get automatic mail, is this a real staff reply, a real bounce). It
imports the settings and `gateway.addresses`, never the pipeline, the store or the outbound room;
the pipeline hands it the raw bytes, the parsed headers and the journal's arrival facts.
"""

from gateway.trust.assess import Arrival, SenderTrust
from gateway.trust.verdict import MethodResult, TrustVerdict

__all__ = ["Arrival", "MethodResult", "SenderTrust", "TrustVerdict"]
