"""Zero-copy header views, checked header values, checksums, capture files.

Per protocol a ``*Packet`` view over a buffer (``checked()`` validates it,
after which no accessor can fail) and a frozen ``*Repr`` value with
``parse`` / ``emit`` / ``to_bytes``. Parsing raises only ``WireError``.
"""

from netoffload.wire.ah import AhPacket, AhRepr
from netoffload.wire.arp import ArpOperation, ArpPacket, ArpRepr
from netoffload.wire.checksum import (
    PARTIAL,
    ChecksumKind,
    add16,
    internet_checksum,
    ones_sum,
    ones_sum_rows,
    ones_sum_spans,
    pseudo_header_sum,
    update,
    update16,
)
from netoffload.wire.error import WireError
from netoffload.wire.esp import EspPacket, EspRepr, EspTrailer
from netoffload.wire.ethernet import EthernetFrame, EthernetRepr, EtherType, MacAddress, VlanTag
from netoffload.wire.icmpv4 import (
    Icmpv4DestUnreachableRepr,
    Icmpv4EchoRepr,
    Icmpv4OtherRepr,
    Icmpv4Packet,
    Icmpv4Repr,
    Icmpv4TimeExceededRepr,
    Icmpv4Type,
)
from netoffload.wire.icmpv6 import (
    Icmpv6EchoRepr,
    Icmpv6NeighborAdvertRepr,
    Icmpv6NeighborSolicitRepr,
    Icmpv6OtherRepr,
    Icmpv6Packet,
    Icmpv6Repr,
    Icmpv6Type,
    NdpLinkAddress,
    NdpRawOption,
)
from netoffload.wire.ipv4 import IpProtocol, Ipv4Packet, Ipv4Repr
from netoffload.wire.ipv6 import (
    Ipv6DestOptionsRepr,
    Ipv6ExtHeader,
    Ipv6FragmentHeader,
    Ipv6FragmentRepr,
    Ipv6HopByHopRepr,
    Ipv6Option,
    Ipv6Packet,
    Ipv6Repr,
    Ipv6RoutingRepr,
    walk_extension_headers,
)
from netoffload.wire.pcap import PcapngWriter, PcapWriter, read_pcap, read_pcapng
from netoffload.wire.tcp import (
    TcpFlags,
    TcpMss,
    TcpNoOperation,
    TcpPacket,
    TcpRepr,
    TcpSack,
    TcpSackPermitted,
    TcpTimestamps,
    TcpWindowScale,
)
from netoffload.wire.template import FlowTemplate, TemplateLayout
from netoffload.wire.udp import UdpPacket, UdpRepr

__all__ = [
    "PARTIAL",
    "AhPacket",
    "AhRepr",
    "ArpOperation",
    "ArpPacket",
    "ArpRepr",
    "ChecksumKind",
    "EspPacket",
    "EspRepr",
    "EspTrailer",
    "EtherType",
    "EthernetFrame",
    "EthernetRepr",
    "FlowTemplate",
    "Icmpv4DestUnreachableRepr",
    "Icmpv4EchoRepr",
    "Icmpv4OtherRepr",
    "Icmpv4Packet",
    "Icmpv4Repr",
    "Icmpv4TimeExceededRepr",
    "Icmpv4Type",
    "Icmpv6EchoRepr",
    "Icmpv6NeighborAdvertRepr",
    "Icmpv6NeighborSolicitRepr",
    "Icmpv6OtherRepr",
    "Icmpv6Packet",
    "Icmpv6Repr",
    "Icmpv6Type",
    "IpProtocol",
    "Ipv4Packet",
    "Ipv4Repr",
    "Ipv6DestOptionsRepr",
    "Ipv6ExtHeader",
    "Ipv6FragmentHeader",
    "Ipv6FragmentRepr",
    "Ipv6HopByHopRepr",
    "Ipv6Option",
    "Ipv6Packet",
    "Ipv6Repr",
    "Ipv6RoutingRepr",
    "MacAddress",
    "NdpLinkAddress",
    "NdpRawOption",
    "PcapWriter",
    "PcapngWriter",
    "TcpFlags",
    "TcpMss",
    "TcpNoOperation",
    "TcpPacket",
    "TcpRepr",
    "TcpSack",
    "TcpSackPermitted",
    "TcpTimestamps",
    "TcpWindowScale",
    "TemplateLayout",
    "UdpPacket",
    "UdpRepr",
    "VlanTag",
    "WireError",
    "add16",
    "internet_checksum",
    "ones_sum",
    "ones_sum_rows",
    "ones_sum_spans",
    "pseudo_header_sum",
    "read_pcap",
    "read_pcapng",
    "update",
    "update16",
    "walk_extension_headers",
]
