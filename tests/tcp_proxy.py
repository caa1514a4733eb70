"""A TCP proxy a test puts between the service and a server (PostgreSQL), to make the network
or the server misbehave as they do in production."""

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards each connection to 127.0.0.1:``port`` (0: a free one, then in ``port``) to
    ``target``, once started (``listen=False``: nothing listens until ``start()``, a server
    not up yet).

    - ``freeze()`` holds the bytes both ways (they wait in the buffers, as for a stopped
      process); ``thaw()`` lets them through again.
    - ``cut()`` closes every connection and refuses new ones (a server restarting);
      ``restore()`` accepts them again.
    """

    def __init__(self, target: tuple[str, int], port: int = 0, *, listen: bool = True) -> None:
        self.target, self.port = target, port
        self.listener: socket.socket | None = None
        self.flowing = threading.Event()
        self.flowing.set()
        self.up = threading.Event()
        self.up.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        if listen:
            self.start()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.thaw()
        self.cut()
        if self.listener is not None:
            self.listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()  # the server is "down": connections drop at once
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
