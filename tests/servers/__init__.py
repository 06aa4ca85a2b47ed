"""Real servers the tests drive: Dovecot (IMAP), a relay sink (SMTP), `gateway serve` processes."""
