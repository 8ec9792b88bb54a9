"""TLS on a user-level socket: ``ssl.SSLObject`` between two ``MemoryBIO``s.

``ssl.SSLContext.wrap_socket`` hands a socket's kernel descriptor to OpenSSL,
and a user-level socket has none. ``TlsSocket`` does what ``ssl.SSLSocket``
does with the same API (``do_handshake``, ``read``/``write``,
``recv``/``send``/``sendall``, ``makefile``, ``getpeercert``, ``cipher``,
``version``, ``unwrap``...): OpenSSL reads and writes two memory buffers,
and the socket's own ``recv`` and ``sendall`` move their bytes. Like
``SSLSocket`` it takes over the socket it wraps (which is then detached).

``wrap_socket(context, sock, ...)`` picks: a ``TlsSocket`` for a user-level
or undecided socket, the context's own ``SSLSocket`` for any other.
``install()`` makes ``SSLContext.wrap_socket`` do that, so ``http.client``,
``urllib`` and ``smtplib`` need no change.
"""

from __future__ import annotations

import errno
import ssl
from typing import Any

from netoffload.sockets._endpoint import os_error
from netoffload.sockets._socket import _REAL, Socket

_READ_BYTES = 1 << 17


class TlsSocket(Socket):
    """A TLS connection over a ``Socket``; made by ``wrap_socket``, never directly."""

    _context: ssl.SSLContext
    _sslobj: ssl.SSLObject | None
    _session: ssl.SSLSession | None
    _incoming: ssl.MemoryBIO
    _outgoing: ssl.MemoryBIO
    server_side: bool
    server_hostname: str | None
    do_handshake_on_connect: bool
    suppress_ragged_eofs: bool

    @classmethod
    def _create(
        cls,
        sock: Socket,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> TlsSocket:
        if sock.getsockopt(ssl.SOL_SOCKET, ssl.SO_TYPE) != ssl.SOCK_STREAM:
            raise NotImplementedError("only stream sockets are supported")
        if server_side and server_hostname:
            raise ValueError("server_hostname can only be specified in client mode")
        if server_side and session is not None:
            raise ValueError("session can only be specified in client mode")
        if context.check_hostname and not server_hostname:
            raise ValueError("check_hostname requires server_hostname")
        self = cls.__new__(cls)
        fd = _REAL.fileno(sock)
        _REAL.__init__(self, sock.family, sock.type, sock.proto, fd)
        timeout = sock.gettimeout()
        # The wrapped socket's state moves here; it keeps nothing and closes nothing.
        self.__dict__.update(sock.__dict__)
        sock.__dict__.update(_ul=None, _rt=None, _record=None, _binding=None, _readiness=None)
        _REAL.detach(sock)
        self._context = context
        self._session = session
        self._sslobj = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.server_side = server_side
        if isinstance(server_hostname, bytes):
            server_hostname = server_hostname.decode("idna")
        self.server_hostname = server_hostname
        self.do_handshake_on_connect = do_handshake_on_connect
        self.suppress_ragged_eofs = suppress_ragged_eofs
        self.settimeout(timeout)
        try:
            connected = self._peer_known()
            if connected:
                self._start_tls()
        except (OSError, ValueError):
            self.close()
            raise
        return self

    def _peer_known(self) -> bool:
        try:
            Socket.getpeername(self)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
            return False
        return True

    def _start_tls(self) -> None:
        self._sslobj = self._context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=self.server_side,
            server_hostname=self.server_hostname,
            session=self._session,
        )
        if self.do_handshake_on_connect:
            if self.gettimeout() == 0.0:
                raise ValueError(
                    "do_handshake_on_connect should not be specified for non-blocking sockets"
                )
            self.do_handshake()

    # -- moving the bytes ------------------------------------------------------------------
    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            Socket.sendall(self, data)

    def _fill(self) -> None:
        """More bytes from the peer into OpenSSL's input; EOF there when the peer closed."""
        try:
            data = Socket.recv(self, _READ_BYTES)
        except BlockingIOError:
            raise ssl.SSLWantReadError("The operation did not complete (read)") from None
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def _obj(self) -> ssl.SSLObject:
        obj = self._sslobj
        if obj is None:
            raise os_error(errno.ENOTCONN)
        return obj

    # -- the SSLSocket API ---------------------------------------------------------------
    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._sslobj.session if self._sslobj is not None else self._session

    @property
    def session_reused(self) -> bool | None:
        return self._sslobj.session_reused if self._sslobj is not None else None

    def do_handshake(self, block: bool = False) -> None:
        obj = self._obj()
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def connect(self, address: Any) -> None:
        if self._sslobj is not None:
            raise ValueError("attempt to connect already-connected SSLSocket!")
        Socket.connect(self, address)
        self._start_tls()

    def connect_ex(self, address: Any) -> int:
        code = Socket.connect_ex(self, address)
        if code == 0:
            self._start_tls()
        return code

    def accept(self) -> tuple[Any, Any]:
        sock, address = Socket.accept(self)
        tls = wrap_socket(
            self._context,
            sock,
            server_side=True,
            do_handshake_on_connect=self.do_handshake_on_connect,
            suppress_ragged_eofs=self.suppress_ragged_eofs,
        )
        return tls, address

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        """Up to ``len`` bytes of plaintext (into ``buffer`` when given: then a count)."""
        obj = self._obj()
        while True:
            try:
                return obj.read(len, buffer) if buffer is not None else obj.read(len)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLZeroReturnError:
                return 0 if buffer is not None else b""
            except ssl.SSLEOFError:
                if self.suppress_ragged_eofs:
                    return 0 if buffer is not None else b""
                raise

    def write(self, data: Any) -> int:
        n = self._obj().write(data)
        self._flush()
        return n

    def recv(self, bufsize: int = 1024, flags: int = 0) -> bytes:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to recv() on {type(self)}")
        if self._sslobj is None:
            return Socket.recv(self, bufsize, flags)
        data = self.read(bufsize)
        assert isinstance(data, bytes)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to recv_into() on {type(self)}")
        if self._sslobj is None:
            return Socket.recv_into(self, buffer, nbytes, flags)
        target = memoryview(buffer).cast("B")
        if nbytes:
            target = target[:nbytes]
        count = self.read(len(target), target)
        assert isinstance(count, int)
        return count

    def send(self, data: Any, flags: int = 0) -> int:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to send() on {type(self)}")
        if self._sslobj is None:
            return Socket.send(self, data, flags)
        return self.write(data)

    def sendall(self, data: Any, flags: int = 0) -> None:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to sendall() on {type(self)}")
        if self._sslobj is None:
            Socket.sendall(self, data, flags)
            return
        view = memoryview(data).cast("B")
        while view:
            view = view[self.write(view[: 1 << 16]) :]

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        raise ValueError(f"recvfrom not allowed on instances of {type(self)}")

    def sendto(self, data: Any, *args: Any) -> int:
        raise ValueError(f"sendto not allowed on instances of {type(self)}")

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined,no-any-return]

    def pending(self) -> int:
        return self._sslobj.pending() if self._sslobj is not None else 0

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._obj().getpeercert(binary_form)

    def cipher(self) -> tuple[str, str, int] | None:
        return self._sslobj.cipher() if self._sslobj is not None else None

    def shared_ciphers(self) -> list[tuple[str, str, int]] | None:
        return self._sslobj.shared_ciphers() if self._sslobj is not None else None

    def compression(self) -> str | None:
        return self._sslobj.compression() if self._sslobj is not None else None

    def version(self) -> str | None:
        return self._sslobj.version() if self._sslobj is not None else None

    def selected_alpn_protocol(self) -> str | None:
        return self._sslobj.selected_alpn_protocol() if self._sslobj is not None else None

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        return self._obj().get_channel_binding(cb_type)

    def verify_client_post_handshake(self) -> None:
        self._obj().verify_client_post_handshake()
        self._flush()

    def unwrap(self) -> Socket:
        """Send the TLS close_notify, wait for the peer's, and give back the plain socket."""
        obj = self._obj()
        while True:
            try:
                obj.unwrap()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()
        self._sslobj = None
        plain = Socket.__new__(Socket)
        _REAL.__init__(plain, self.family, self.type, self.proto, _REAL.fileno(self))
        plain.__dict__.update(
            {k: v for k, v in self.__dict__.items() if not k.startswith(("_ssl", "_in", "_out"))}
        )
        self.__dict__.update(_ul=None, _rt=None, _record=None, _binding=None, _readiness=None)
        _REAL.detach(self)
        return plain

    def shutdown(self, how: int) -> None:
        self._sslobj = None
        Socket.shutdown(self, how)

    def _real_close(self, _ss: Any = None) -> None:
        self._sslobj = None
        Socket._real_close(self)


def wrap_socket(  # noqa: PLR0917 - SSLContext.wrap_socket's signature, which install() sets
    context: ssl.SSLContext,
    sock: Any,
    server_side: bool = False,
    do_handshake_on_connect: bool = True,
    suppress_ragged_eofs: bool = True,
    server_hostname: str | bytes | None = None,
    session: ssl.SSLSession | None = None,
) -> Any:
    """``context.wrap_socket(sock, ...)`` that also serves user-level sockets."""
    if isinstance(sock, Socket) and sock.path != "os":
        return TlsSocket._create(
            sock,
            context,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )
    return _ORIGINAL_WRAP(
        context, sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
        server_hostname, session,
    )  # fmt: skip


def _original_wrap() -> Any:
    wrap = ssl.SSLContext.wrap_socket
    return getattr(wrap, "_netoffload_original", wrap)


_ORIGINAL_WRAP = _original_wrap()
wrap_socket._netoffload_original = _ORIGINAL_WRAP  # type: ignore[attr-defined]
