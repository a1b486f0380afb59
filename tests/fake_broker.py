"""A tiny byte-level fake MQTT broker for protocol-negotiation tests.

It listens on 127.0.0.1 (port 0 -> ``.port``), serves each connection in a
thread and records every packet the clients send, so tests can assert exactly
what went over the wire::

    with FakeBroker(refuse_v5=True) as fb:
        ...  # point a client at 127.0.0.1:fb.port
        connects = fb.wait_for("CONNECT", count=2)
        assert [p.protocol_level for p in connects] == [5, 4]

Behaviour:

* CONNECT with protocol level 5:
    - ``refuse_v5=True`` and ``refusal="v5"`` (default): v5 CONNACK with reason
      code 0x84 (Unsupported Protocol Version), then close;
    - ``refuse_v5=True`` and ``refusal="v311"``: 3.1.1-style CONNACK with return
      code 1 (unacceptable protocol version), then close;
    - ``refuse_v5=False``: v5 CONNACK success (no properties); the session then
      continues with v5 packet formats.
* CONNECT with protocol level 3 or 4: CONNACK 0.  Any other level: CONNACK
  return code 1, then close.
* After CONNACK: PINGREQ -> PINGRESP, SUBSCRIBE -> SUBACK granting the requested
  QoS, UNSUBSCRIBE -> UNSUBACK, PUBLISH QoS1 -> PUBACK, PUBLISH QoS2 -> PUBREC,
  PUBREL -> PUBCOMP, DISCONNECT -> close.  Nothing is routed to subscribers.
* ``drop_on={"SUBSCRIBE": 1}``: the first N packets of that type are
  recorded and answered by closing the connection (a broker that dies
  mid-request); later ones are answered normally.
* ``after_suback=b"..."``: raw bytes sent after every SUBACK (a PUBLISH a
  real broker would refuse to forward, say).
* A first packet that is not CONNECT, or a malformed packet, closes the
  connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple, Union

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15)

PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}
_TYPES_BY_NAME = {v: k for k, v in PACKET_NAMES.items()}

# Pre-built replies
CONNACK_V5_UNSUPPORTED = bytes([0x20, 0x03, 0x00, 0x84, 0x00])
CONNACK_V311_UNACCEPTABLE_VERSION = bytes([0x20, 0x02, 0x00, 0x01])
CONNACK_V311_ACCEPTED = bytes([0x20, 0x02, 0x00, 0x00])
CONNACK_V5_SUCCESS = bytes([0x20, 0x03, 0x00, 0x00, 0x00])
PINGRESP_BYTES = bytes([0xD0, 0x00])


class MalformedPacket(Exception):
    pass


def encode_remaining_length(n: int) -> bytes:
    """MQTT variable byte integer (1..4 bytes)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError("remaining length out of range: {}".format(n))
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    """Decode a variable byte integer at ``buf[pos:]``; return (value, new_pos)."""
    value, mult = 0, 1
    for i in range(4):
        if pos + i >= len(buf):
            raise MalformedPacket("truncated variable byte integer")
        b = buf[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def build_packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + encode_remaining_length(len(body)) + body


@dataclass
class Packet:
    """One packet received from a client."""

    conn: int                      # connection number, 0-based, in accept order
    type: int                      # packet type 1..15
    flags: int                     # low nibble of the first byte
    raw: bytes                     # the whole packet, fixed header included
    body: bytes                    # variable header + payload
    received_at: float = field(default_factory=time.monotonic)
    # CONNECT only
    protocol_name: Optional[str] = None
    protocol_level: Optional[int] = None
    connect_flags: Optional[int] = None
    keepalive: Optional[int] = None
    client_id: Optional[str] = None
    # PUBLISH only
    topic: Optional[str] = None
    qos: Optional[int] = None
    packet_id: Optional[int] = None

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.type, "RESERVED{}".format(self.type))

    def __repr__(self) -> str:
        extra = ""
        if self.type == CONNECT:
            extra = " {}/level {} client_id={!r}".format(
                self.protocol_name, self.protocol_level, self.client_id)
        elif self.type == PUBLISH:
            extra = " topic={!r} qos={}".format(self.topic, self.qos)
        return "<Packet conn={} {} flags={:#x} len={}{}>".format(
            self.conn, self.name, self.flags, len(self.raw), extra)


def _read_string(body: bytes, pos: int) -> Tuple[str, int]:
    if pos + 2 > len(body):
        raise MalformedPacket("truncated string length")
    (n,) = struct.unpack_from("!H", body, pos)
    pos += 2
    if pos + n > len(body):
        raise MalformedPacket("truncated string")
    return body[pos:pos + n].decode("utf-8", errors="replace"), pos + n


def _parse_connect(pkt: Packet) -> None:
    body = pkt.body
    pkt.protocol_name, pos = _read_string(body, 0)
    if pos + 4 > len(body):
        raise MalformedPacket("truncated CONNECT variable header")
    pkt.protocol_level = body[pos]
    pkt.connect_flags = body[pos + 1]
    (pkt.keepalive,) = struct.unpack_from("!H", body, pos + 2)
    pos += 4
    if pkt.protocol_level == 5:
        plen, pos = decode_varint(body, pos)
        pos += plen
    pkt.client_id, _ = _read_string(body, pos)


class FakeBroker:
    """Threaded fake MQTT broker on 127.0.0.1; see the module docstring."""

    def __init__(self, refuse_v5: bool = True, refusal: str = "v5",
                 host: str = "127.0.0.1", drop_on: Optional[dict] = None,
                 after_suback: Optional[bytes] = None) -> None:
        if refusal not in ("v5", "v311", "close"):
            raise ValueError("refusal must be 'v5' (CONNACK reason 0x84), 'v311' (CONNACK return "
                             "code 1) or 'close' (no CONNACK: RabbitMQ 3.10), got {!r}".format(refusal))
        self.refuse_v5 = refuse_v5
        self.refusal = refusal
        self.after_suback = after_suback
        self.drops_left = {_TYPES_BY_NAME[k]: n for k, n in (drop_on or {}).items()}
        self.host = host
        self.port: Optional[int] = None
        self.packets: List[Packet] = []
        self.sent: List[Tuple[int, bytes]] = []   # (conn, raw bytes) sent by the broker
        self.connections = 0                      # accepted so far
        self.errors: List[str] = []               # malformed input, unexpected exceptions
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._lsock: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._threads: List[threading.Thread] = []
        self._socks: List[socket.socket] = []

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "FakeBroker":
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.host, 0))
        lsock.listen(16)
        lsock.settimeout(0.05)
        self._lsock = lsock
        self.port = lsock.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="FakeBroker-accept", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
            self._accept_thread = None
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        with self._cond:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)

    def __enter__(self) -> "FakeBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- queries
    def received(self, ptype: Union[int, str, None] = None) -> List[Packet]:
        """Snapshot of the packets received so far, optionally of one type."""
        t = _type(ptype)
        with self._cond:
            return [p for p in self.packets if t is None or p.type == t]

    @property
    def connects(self) -> List[Packet]:
        return self.received(CONNECT)

    def wait_for(self, ptype: Union[int, str, None] = None, count: int = 1,
                 timeout: float = 5.0,
                 where: Optional[Callable[[Packet], bool]] = None) -> List[Packet]:
        """Wait until ``count`` matching packets were received; return them all.

        Raises ``TimeoutError`` listing everything received so far.
        """
        t = _type(ptype)

        def matching() -> List[Packet]:
            return [p for p in self.packets
                    if (t is None or p.type == t) and (where is None or where(p))]

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = matching()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        "FakeBroker: expected {} x {} within {} s, got {}; all packets: {}; "
                        "errors: {}".format(count, PACKET_NAMES.get(t, "any") if t else "any",
                                            timeout, len(found), self.packets, self.errors))
                self._cond.wait(remaining)

    # -------------------------------------------------------------- internals
    def _accept_loop(self) -> None:
        assert self._lsock is not None
        while not self._stop.is_set():
            try:
                sock, _addr = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                conn = self.connections
                self.connections += 1
                self._socks.append(sock)
                t = threading.Thread(target=self._serve, args=(sock, conn),
                                     name="FakeBroker-conn{}".format(conn), daemon=True)
                self._threads.append(t)
            t.start()

    def _send(self, sock: socket.socket, conn: int, data: bytes) -> None:
        with self._cond:
            self.sent.append((conn, data))
        sock.sendall(data)

    def _close(self, sock: socket.socket, graceful: bool) -> None:
        if graceful:
            # Half-close and drain so that the client reads our last packet
            # instead of getting a RST for data we never read.
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(1.0)
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        sock.close()

    def _read_packet(self, sock: socket.socket, conn: int) -> Optional[Packet]:
        first = _recv_exact(sock, 1)
        if first is None:
            return None
        header = bytearray(first)
        length, mult = 0, 1
        for i in range(4):
            b = _recv_exact(sock, 1)
            if b is None:
                raise MalformedPacket("EOF inside remaining length")
            header += b
            length += (b[0] & 0x7F) * mult
            mult *= 128
            if not b[0] & 0x80:
                break
        else:
            raise MalformedPacket("remaining length longer than 4 bytes")
        body = _recv_exact(sock, length) if length else b""
        if body is None:
            raise MalformedPacket("EOF inside packet body ({} bytes expected)".format(length))
        return Packet(conn=conn, type=first[0] >> 4, flags=first[0] & 0x0F,
                      raw=bytes(header) + body, body=body)

    def _record(self, pkt: Packet) -> None:
        with self._cond:
            self.packets.append(pkt)
            self._cond.notify_all()

    def _serve(self, sock: socket.socket, conn: int) -> None:
        graceful = True
        try:
            graceful = self._session(sock, conn)
        except MalformedPacket as e:
            with self._cond:
                self.errors.append("conn {}: malformed packet: {}".format(conn, e))
        except OSError:
            pass  # peer went away, or stop()
        except Exception as e:  # pragma: no cover - a bug in this file
            with self._cond:
                self.errors.append("conn {}: {!r}".format(conn, e))
        finally:
            self._close(sock, graceful and not self._stop.is_set())
            with self._cond:
                if sock in self._socks:
                    self._socks.remove(sock)

    def _session(self, sock: socket.socket, conn: int) -> bool:
        """Serve one connection; return True for a graceful (draining) close."""
        pkt = self._read_packet(sock, conn)
        if pkt is None:
            return False
        if pkt.type != CONNECT:
            self._record(pkt)
            with self._cond:
                self.errors.append("conn {}: first packet was {}".format(conn, pkt.name))
            return False
        _parse_connect(pkt)
        self._record(pkt)
        level = pkt.protocol_level
        if level == 5:
            if self.refuse_v5 and self.refusal == "close":
                return False          # close the socket without a CONNACK
            if self.refuse_v5:
                self._send(sock, conn, CONNACK_V5_UNSUPPORTED if self.refusal == "v5"
                           else CONNACK_V311_UNACCEPTABLE_VERSION)
                return True
            self._send(sock, conn, CONNACK_V5_SUCCESS)
        elif level in (3, 4):
            self._send(sock, conn, CONNACK_V311_ACCEPTED)
        else:
            self._send(sock, conn, CONNACK_V311_UNACCEPTABLE_VERSION)
            return True
        v5 = level == 5

        while not self._stop.is_set():
            pkt = self._read_packet(sock, conn)
            if pkt is None:
                return False
            body = pkt.body
            if pkt.type == PUBLISH:
                pkt.qos = (pkt.flags >> 1) & 3
                pkt.topic, pos = _read_string(body, 0)
                if pkt.qos:
                    if pos + 2 > len(body):
                        raise MalformedPacket("PUBLISH without packet id")
                    (pkt.packet_id,) = struct.unpack_from("!H", body, pos)
            elif pkt.type in (SUBSCRIBE, UNSUBSCRIBE, PUBREL) and len(body) >= 2:
                (pkt.packet_id,) = struct.unpack_from("!H", body, 0)
            self._record(pkt)
            with self._cond:
                drop = self.drops_left.get(pkt.type, 0) > 0
                if drop:
                    self.drops_left[pkt.type] -= 1
            if drop:
                return False          # close without answering

            if pkt.type == PINGREQ:
                self._send(sock, conn, PINGRESP_BYTES)
            elif pkt.type == PUBLISH and pkt.qos in (1, 2):
                ack = PUBACK if pkt.qos == 1 else PUBREC
                self._send(sock, conn, build_packet(ack, 0, struct.pack("!H", pkt.packet_id)))
            elif pkt.type == PUBREL:
                self._send(sock, conn, build_packet(PUBCOMP, 0, body[:2]))
            elif pkt.type == SUBSCRIBE:
                granted = [opts & 3 for _topic, opts in _subscribe_filters(body, v5)]
                props = b"\x00" if v5 else b""
                self._send(sock, conn, build_packet(SUBACK, 0, body[:2] + props + bytes(granted)))
                if self.after_suback:
                    self._send(sock, conn, self.after_suback)
            elif pkt.type == UNSUBSCRIBE:
                if v5:
                    n = len(_unsubscribe_filters(body))
                    reply = body[:2] + b"\x00" + bytes(n)   # props len 0, reason 0 each
                else:
                    reply = body[:2]
                self._send(sock, conn, build_packet(UNSUBACK, 0, reply))
            elif pkt.type == DISCONNECT:
                return False
        return False


def _subscribe_filters(body: bytes, v5: bool) -> List[Tuple[str, int]]:
    pos = 2
    if v5:
        plen, pos = decode_varint(body, pos)
        pos += plen
    out = []
    while pos < len(body):
        topic, pos = _read_string(body, pos)
        if pos >= len(body):
            raise MalformedPacket("SUBSCRIBE filter without options byte")
        out.append((topic, body[pos]))
        pos += 1
    if not out:
        raise MalformedPacket("SUBSCRIBE without topic filters")
    return out


def _unsubscribe_filters(body: bytes) -> List[str]:
    pos = 2
    plen, pos = decode_varint(body, pos)
    pos += plen
    out = []
    while pos < len(body):
        topic, pos = _read_string(body, pos)
        out.append(topic)
    return out


def _type(ptype: Union[int, str, None]) -> Optional[int]:
    if ptype is None or isinstance(ptype, int):
        return ptype
    try:
        return _TYPES_BY_NAME[ptype.upper()]
    except KeyError:
        raise ValueError("unknown packet type {!r}".format(ptype)) from None


def _recv_exact(sock: socket.socket, n: int) -> Optional[bytes]:
    """Read exactly n bytes; None on EOF before the first byte, error after."""
    chunks = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            if got == 0:
                return None
            raise MalformedPacket("EOF after {} of {} bytes".format(got, n))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
