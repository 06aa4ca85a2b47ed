"""The outgoing-mail room: everything between "this mail should go out" and bytes accepted by a relay.

It owns which replies are queued and how (replies.py: the headers of SPEC §6, the outbox row and
the case message, each written in the caller's transaction), composing the MIME bytes
(compose.py), the Jinja2 mail templates (templates.py over templates/<lang>/), the outbox worker
that claims due rows and records sent / retried / failed (worker.py, which also tells staff about
failures and bounces), and the relays (relay.py: smtp://, smtps://, smtp+starttls://, maildir:).
Which mail an inbound message causes is decided by choose.py (owned with the pipeline). It may
import gateway.settings, gateway.addresses, gateway.metrics, gateway.classify (the loop marker)
and store; never the pipeline, the edges (smtp, imap, panel, http) or the wiring (gateway.app).
"""
