"""The throwaway Dovecot works: APPEND, fetch back byte-exact, flags, restart, UIDVALIDITY, TLS."""

from __future__ import annotations

import imaplib

from tests.servers.dovecot import DovecotServer, make_dovecot_fixture

dovecot = make_dovecot_fixture()
dovecot_tls = make_dovecot_fixture(name="dovecot_tls", tls=True)

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nbody \xc5\xbc\r\n"


def test_append_and_fetch_with_imaplib(dovecot: DovecotServer) -> None:
    uid = dovecot.append(MESSAGE)
    seen = dovecot.append(MESSAGE.replace(b"hi", b"seen"), flags="(\\Seen)")
    assert dovecot.fetch(uid) == MESSAGE
    messages = dovecot.messages()
    assert set(messages) == {uid, seen}
    assert "\\Seen" not in messages[uid]
    assert "\\Seen" in messages[seen]
    with dovecot.client() as connection:
        assert connection.select("INBOX")[0] == "OK"
        typ, data = connection.uid("FETCH", str(uid), "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == MESSAGE


def test_folders_restart_and_uidvalidity(dovecot: DovecotServer) -> None:
    dovecot.create_folder("Archive")
    uid = dovecot.append(MESSAGE, folder="Archive")
    before = dovecot.uidvalidity(folder="Archive")
    dovecot.restart()
    assert dovecot.running
    assert dovecot.fetch(uid, folder="Archive") == MESSAGE  # mail survives a restart
    after = dovecot.change_uidvalidity(folder="Archive")
    assert after != before and dovecot.uidvalidity(folder="Archive") == after
    assert set(dovecot.messages(folder="Archive")) == {uid}  # same messages, new validity


def test_two_instances_side_by_side(dovecot: DovecotServer, dovecot_tls: DovecotServer) -> None:
    assert dovecot.port != dovecot_tls.port
    dovecot.append(MESSAGE)
    assert dovecot_tls.messages() == {}


def test_tls_and_starttls(dovecot_tls: DovecotServer) -> None:
    uid = dovecot_tls.append(MESSAGE)
    assert dovecot_tls.tls_port is not None
    implicit = imaplib.IMAP4_SSL("127.0.0.1", dovecot_tls.tls_port, ssl_context=dovecot_tls.ssl_context())
    implicit.login("support", dovecot_tls.users["support"])
    implicit.select("INBOX")
    assert implicit.uid("FETCH", str(uid), "(BODY.PEEK[])")[1][0][1] == MESSAGE
    implicit.logout()
    upgraded = imaplib.IMAP4("127.0.0.1", dovecot_tls.port)
    upgraded.starttls(ssl_context=dovecot_tls.ssl_context())
    assert upgraded.login("support", dovecot_tls.users["support"])[0] == "OK"
    upgraded.logout()
