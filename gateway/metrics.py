"""Prometheus metrics of this instance (SPEC §14): counters the steps bump, gauges read at scrape time.

Every step that counts imports the metric it bumps from here, so the names live in one place.
Counters are per process; `instance` (settings.instance_name) is a constant label added by the
HTTP layer when it renders, so several instances behind one scrape job stay apart. Gauges that
describe shared state (journal backlog, outbox depth) are computed from the database when scraped.
This module imports nothing from the gateway.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ACCEPTED = Counter("gateway_messages_accepted", "Messages journaled and acknowledged", ["source"], registry=REGISTRY)
PROCESSED = Counter(
    "gateway_messages_processed", "Journal entries processed, by outcome", ["outcome"], registry=REGISTRY
)
QUARANTINED = Counter("gateway_messages_quarantined", "Journal entries quarantined", registry=REGISTRY)
SPAM = Counter("gateway_messages_spam", "Messages stored as spam", registry=REGISTRY)
SECURITY_EVENTS = Counter("gateway_security_events", "Security events recorded, by kind", ["kind"], registry=REGISTRY)
OUTBOX = Counter(
    "gateway_outbox_attempts", "Outbox send attempts, by result (sent|retried|failed)", ["result"], registry=REGISTRY
)
IMAP_POLLS = Counter("gateway_imap_polls", "IMAP polls (fetch rounds), by mailbox", ["mailbox"], registry=REGISTRY)
IMAP_ERRORS = Counter("gateway_imap_errors", "IMAP errors, by mailbox", ["mailbox"], registry=REGISTRY)
ACK_LATENCY = Histogram(
    "gateway_ack_latency_seconds",
    "From the end of the received bytes to the durable journal commit",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
PROCESSING_TIME = Histogram(
    "gateway_processing_seconds",
    "Time to process one journal entry (parse, classify, thread, store, choose replies)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
