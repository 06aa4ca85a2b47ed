"""The SMTP edge: aiosmtpd listener, connection caps and timeouts, the DATA reader, DATA -> intake.

This room owns every SMTP reply string and every SMTP limit (SPEC §3, §13). It may import
gateway.settings, gateway.intake and gateway.addresses, and aiosmtpd; nothing outside it imports
more than `start_smtp_server`. Modules: server (the listener), handler (recipients, DATA -> intake,
AUTH), reader (GatewaySMTP, the aiosmtpd subclass with our DATA reader), limits (gate, timeouts,
open-file limit).
"""

from gateway.smtp.server import start_smtp_server

__all__ = ["start_smtp_server"]
