"""The user-level TCP/IP stack: sans-I/O protocol cores and the interface that drives them.

Every core here is a state machine fed parsed packets and the time
(``now_ns``, integer nanoseconds) and asked for what to send and when its
next timer fires. None of them opens a socket, reads a clock, sleeps or
spawns a thread; randomness comes in as a ``random.Random``. The
``Interface`` (binding a stack to a device and the offload policy) and the
event loop are the only parts that touch a device.

Layout::

    neighbor.py         ARP and IPv6 neighbour discovery: cache, retries, queued packets
    neighbor_frames.py  ARP / neighbour solicitation and advertisement frames
    route.py            routes to an interface and a gateway, longest prefix first
    fragment.py         IPv4/IPv6 fragmentation and bounded reassembly
    icmp.py             echo replies, errors in and out, rate limits
    pmtu.py             the path MTU cache
    ping.py             an echo client (``netoffload ping``)
    udp.py              UDP endpoints, UDP_SEGMENT bursts and UDP_GRO splitting
    tcp/                one TCP connection per object (RFC 9293 and friends), listeners
"""
