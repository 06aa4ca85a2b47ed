"""`GET /metrics`: this instance's counters and histograms, plus gauges read from the database.

Every sample carries `instance` (settings.instance_name): the counters in gateway.metrics count
what this process did, so several instances behind one scrape job stay apart (with Prometheus,
set `honor_labels: true` on the job, or the label arrives as `exported_instance`). The gauges
describe the shared journal and outbox, read when scraped, so they are the same on every instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.metrics import REGISTRY
from gateway.ops.figures import MailboxView, OpsDeps, Snapshot, snapshot

INSTANCE = "instance"


class _InstanceCollector(Collector):
    """One scrape: the process's metrics relabelled with the instance, and the database gauges."""

    def __init__(self, instance: str, figures: Snapshot, mailboxes: Sequence[MailboxView]) -> None:
        self._instance = instance
        self._figures = figures
        self._mailboxes = mailboxes

    def collect(self) -> Iterable[Metric]:
        for family in REGISTRY.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(
                    sample.name, {**sample.labels, INSTANCE: self._instance}, sample.value, sample.timestamp
                )
            yield labelled
        yield from self._gauges()

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=[INSTANCE])
        family.add_metric([self._instance], value)
        return family

    def _gauges(self) -> Iterable[Metric]:
        figures = self._figures
        yield self._gauge(
            "gateway_journal_backlog", "Journal entries acknowledged and not processed yet", figures.journal.pending
        )
        yield self._gauge(
            "gateway_journal_oldest_pending_age_seconds",
            "Age of the oldest unprocessed journal entry (0 when there is none)",
            figures.age_seconds(figures.journal.oldest_pending_at),
        )
        yield self._gauge(
            "gateway_journal_quarantined", "Journal entries in quarantine now", figures.journal.quarantined
        )
        yield self._gauge("gateway_outbox_queue_depth", "Outgoing messages queued or being sent", figures.outbox.queued)
        yield self._gauge(
            "gateway_outbox_oldest_due_age_seconds",
            "How long the longest-waiting due outgoing message has been due (0 when none is)",
            figures.age_seconds(figures.outbox.oldest_due_at),
        )
        yield self._gauge("gateway_outbox_failed", "Outgoing messages that failed for good", figures.outbox.failed)
        yield self._gauge("gateway_spam_cases", "Cases stored as spam", figures.spam_cases)
        up = GaugeMetricFamily(
            "gateway_imap_mailbox_up",
            "1 when this instance's poller of the mailbox works (or stands by), 0 when it fails",
            labels=[INSTANCE, "mailbox"],
        )
        for mailbox in self._mailboxes:
            up.add_metric([self._instance, mailbox.name], 0 if mailbox.failing else 1)
        yield up


def render(deps: OpsDeps) -> bytes:
    """The Prometheus text exposition of this instance (blocking: it reads the database)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_InstanceCollector(deps.settings.instance_name, snapshot(deps), deps.mailboxes()))
    return generate_latest(registry)
