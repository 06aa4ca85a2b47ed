"""Sender trust: who really sent a message, decided once, at the edge, and carried as a `TrustVerdict`.

This room owns the reading of trusted relays' `Authentication-Results` and spam headers
(`upstream`), our own SPF, DKIM and DMARC checks through a budgeted, cached DNS resolver
(`resolver`, `checks`), the verdict itself (`verdict`, `assess`), and the policies later steps ask
it (`gate`: the pipeline's questions: is this a bounce of ours, may this sender get automatic mail or
add participants, is this a real staff reply). It imports the settings, `gateway.addresses`,
`gateway.parse` and `gateway.metrics`; only `gate` writes rows (security events, a staff notice)
through `store` and the outbound `Replies`, into the pipeline's transaction, and it never imports
the pipeline (its types only for checking).
"""

from gateway.trust.assess import Arrival, SenderTrust
from gateway.trust.verdict import AutoReply, MethodResult, TrustVerdict

__all__ = ["Arrival", "AutoReply", "MethodResult", "SenderTrust", "TrustVerdict"]
