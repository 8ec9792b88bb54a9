"""Query a SoftNic, enable everything, and hand it one 64 KiB TCP super-packet.

Run: .venv/bin/python examples/softnic_tso.py
"""

from ipaddress import IPv4Address

from netoffload.device.softnic import SoftNic
from netoffload.offload import Packet, Selection, TxRequest
from netoffload.wire import (
    PARTIAL,
    EthernetRepr,
    EtherType,
    IpProtocol,
    Ipv4Repr,
    MacAddress,
    TcpFlags,
    TcpRepr,
)

src, dst = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
payload = bytes(range(256)) * 254 + bytes(1448 * 45 - 256 * 254)  # 45 full segments
tcp = TcpRepr(40000, 5001, seq_number=1, ack_number=1, flags=TcpFlags.ACK, window_len=512)
ip = Ipv4Repr(src, dst, IpProtocol.TCP, payload_len=tcp.buffer_len(len(payload)), dont_frag=True)
eth = EthernetRepr(
    MacAddress.parse("02:00:00:00:00:02"), MacAddress.parse("02:00:00:00:00:01"), EtherType.IPV4
)
# CHECKSUM_PARTIAL: the TCP checksum field holds the pseudo-header sum; the NIC finishes it.
segment = tcp.to_bytes(payload, src=src, dst=dst, checksum=PARTIAL)
frame = eth.to_bytes(ip.to_bytes(segment))
# "Cut this at 1448 bytes and fill every checksum": offsets from the Reprs, not by hand.
request = TxRequest.segment_l4(
    l4_offset=eth.header_len + ip.header_len,
    protocol=IpProtocol.TCP,
    ip_version=4,
    mss=1448,
    header_len=eth.header_len + ip.header_len + tcp.header_len,
)

with SoftNic() as nic:
    for record in nic.capabilities():
        print(record)
    nic.enable(Selection.everything(nic.capabilities()))
    assert nic.send([Packet(frame, tx=request)]) == 1
    assert nic.peer is not None  # the far end of the SoftNic's own Cable
    segments: list[bytes] = []
    while len(segments) < 45:
        batch = nic.peer.recv_batch(timeout_s=5.0)
        assert batch, "no segments arrived"
        segments += [bytes(s) for s in batch]
    print(f"{len(segments)} segments on the wire, sizes {len(segments[0])}..{len(segments[-1])}")
    print(nic.stats().as_dict())
