"""Staff reply tokens are bound to the case, the staff address and a date; reply and bounce tokens cannot move.

The clock of ReplyAddresses is controlled here (days pass without waiting); the end-to-end test
sends a staff reply to a token that expired, over real SMTP, and checks it is refused and recorded.
"""

from __future__ import annotations

import time

from gateway.addresses import ReplyAddresses, TokenCheck
from tests.helpers import STAFF, STAFF_QUEUE, SUPPORT, all_cases, authenticated, make_mail, send, sent_to, settle
from tests.trust_helpers import events

SECRET = "test-signing-secret"  # conftest's signing secret
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def addresses(clock: Clock) -> ReplyAddresses:
    return ReplyAddresses(
        support_address=SUPPORT, secret=SECRET, staff_queue_address=STAFF_QUEUE, staff_token_days=90, clock=clock
    )


def test_a_staff_token_is_bound_to_the_staff_address_it_was_sent_to():
    replies = addresses(Clock())
    token = replies.parse(replies.for_staff(number="2026-000001", staff_address="anna@example.test"))
    assert token is not None and token.staff
    assert replies.check(token, sender="anna@example.test") is TokenCheck.VALID
    assert replies.check(token, sender="piotr@example.test") is TokenCheck.FORGED


def test_a_staff_token_sent_to_the_queue_serves_every_staff_member():
    replies = addresses(Clock())
    token = replies.parse(replies.for_staff(number="2026-000001"))
    assert token is not None
    assert replies.check(token, sender="piotr@example.test") is TokenCheck.VALID  # staff-ness is the caller's


def test_a_staff_token_expires():
    clock = Clock()
    replies = addresses(clock)
    token = replies.parse(replies.for_staff(number="2026-000001"))
    assert token is not None
    clock.now += 90 * DAY
    assert replies.check(token, sender=STAFF) is TokenCheck.VALID  # the last day still counts
    clock.now += 1 * DAY
    assert replies.check(token, sender=STAFF) is TokenCheck.EXPIRED


def test_a_staff_token_cannot_be_moved_to_another_case_or_given_a_new_date():
    replies = addresses(Clock())
    address = replies.for_staff(number="2026-000001")
    moved = replies.parse(address.replace("2026-000001", "2026-000002"))
    assert moved is not None and replies.check(moved, sender=STAFF) is TokenCheck.FORGED
    token = replies.parse(address)
    assert token is not None and token.expires_day is not None
    later = replies.parse(address.replace(f"-{token.expires_day}-", f"-{token.expires_day + 365}-"))
    assert later is not None and replies.check(later, sender=STAFF) is TokenCheck.FORGED


def test_a_customer_token_is_bound_to_case_and_customer():
    replies = addresses(Clock())
    token = replies.parse(replies.for_customer(number="2026-000001", customer="jan@klient.example"))
    assert token is not None and not token.staff
    assert replies.check(token, sender="jan@klient.example") is TokenCheck.VALID
    assert replies.check(token, sender="ola@klient.example") is TokenCheck.FORGED


def test_a_bounce_address_is_bound_to_its_message_id():
    replies = addresses(Clock())
    address = replies.for_bounce(message_id="abc@example.test")
    assert replies.check_bounce(address, message_id="abc@example.test") is TokenCheck.VALID
    assert replies.check_bounce(address, message_id="other@example.test") is TokenCheck.FORGED
    assert replies.check_bounce(SUPPORT, message_id="abc@example.test") is TokenCheck.NOT_A_TOKEN
    assert replies.parse(address) is None  # not a reply token: it threads nothing


async def test_a_staff_reply_to_an_expired_token_is_refused_and_recorded(gateway, settings):
    await send(settings, authenticated(make_mail(sender="jan@klient.example", subject="Pomocy")))
    await settle(gateway, outbox=True)
    [case] = all_cases(gateway)
    before = len(sent_to(settings, "jan@klient.example"))
    long_ago = Clock()
    long_ago.now -= 120 * DAY  # a notification of four months ago
    expired = addresses(long_ago).for_staff(number=case["number"])
    reply = authenticated(make_mail(sender=STAFF, to=expired, subject="Re: stara sprawa", body="Odpowiedź."))
    assert (await send(settings, reply, recipients=[expired]))[0] == 250
    await settle(gateway, outbox=True)
    assert len(sent_to(settings, "jan@klient.example")) == before  # nothing went to the customer
    assert events(gateway, "expired_token") == [STAFF]
