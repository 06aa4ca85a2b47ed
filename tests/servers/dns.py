"""A throwaway authoritative DNS server for the tests: UDP and TCP on 127.0.0.1, a port the OS picks.

Records are added while it runs (`add("klient.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")`);
anything not added is NXDOMAIN. `silent = True` makes it swallow queries (an unreachable resolver);
`queries` lists every question asked, answered or not.
Answers larger than 512 bytes over UDP are truncated, so the TCP path is exercised as a real
resolver would use it. Built on dnspython's wire format, in threads: the gateway resolves in threads too.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_UDP_LIMIT = 512


class DnsServer:
    def __init__(self) -> None:
        self._records: dict[tuple[dns.name.Name, int], list[str]] = {}
        self._lock = threading.Lock()
        self.silent = False
        self.queries: list[tuple[str, str]] = []
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        key = (dns.name.from_text(name), dns.rdatatype.from_text(rdtype))
        with self._lock:
            self._records.setdefault(key, []).extend(values)

    def add_txt(self, name: str, text: str) -> None:
        """A TXT record holding `text`, split into 255-byte strings as a zone file would."""
        chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
        self.add(name, "TXT", " ".join('"' + chunk.replace('"', '\\"') + '"' for chunk in chunks))

    def answer(self, wire: bytes, *, over_udp: bool) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        with self._lock:
            values = list(self._records.get((question.name, question.rdtype), []))
            name_exists = any(name == question.name for name, _ in self._records)
        if values:
            rrset = dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, question.rdtype, values)
            response.answer.append(rrset)
        elif not name_exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire_out = response.to_wire()
        if over_udp and len(wire_out) > _UDP_LIMIT:
            response.answer = []
            response.flags |= dns.flags.TC
            wire_out = response.to_wire()
        return wire_out

    def start(self) -> None:
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data, over_udp=True)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                length = int.from_bytes(_read(sock, 2), "big")
                reply = server.answer(_read(sock, length), over_udp=False)
                if reply is not None:
                    sock.sendall(len(reply).to_bytes(2, "big") + reply)

        for _ in range(20):  # UDP and TCP on the same port: retry if TCP's is taken
            udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        udp.daemon_threads = tcp.daemon_threads = True
        self._udp, self._tcp, self.port = udp, tcp, port
        for srv in (udp, tcp):
            threading.Thread(target=srv.serve_forever, name=f"dns-{port}", daemon=True).start()

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
