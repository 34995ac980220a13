"""A hand-written keep-alive HTTP/1.1 upstream on a real socket, for tests that need an
answer (or a silence) no fake provider gives: each complete request (Content-Length
bodies) goes to the subclass's ``answer``."""

from __future__ import annotations

import socket
import threading


class RawUpstream:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def answer(self, conn: socket.socket, head: bytes, body: bytes, on_connection: int) -> bool:
        """Answer one request (``on_connection``: how many came before it on ``conn``);
        False closes the connection instead."""
        raise NotImplementedError

    def before_body(self, conn: socket.socket, head: bytes, length: int) -> bool:
        """Called once a request's head is read, before its body of ``length`` bytes; False
        ends the connection's serving (closing it) without reading the body."""
        return True

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        seen = 0
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not self.before_body(conn, head, length):
                    return
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                if not self.answer(conn, head, body, seen):
                    return
                seen += 1

    def close(self) -> None:
        self.sock.close()
