"""An ESP security association: its configuration (the context a device is given) and state.

``EspConfig`` is the whole context of an SA: SPI, algorithm, keys laid out as
Linux ``ip xfrm`` takes them (for the AEADs the cipher key followed by the
4-byte salt), mode, tunnel endpoints, ESN, replay window, NAT traversal and
lifetimes. It is immutable and its repr leaves the keys out.
``SecurityAssociation`` is a config plus the state ``SaBase`` keeps and the
cipher objects made once from the keys.

Sequence numbers and IVs have one owner, the host: ``next_sequence()`` or
``allocate(n)`` hands out numbers, and ``iv_for(seq)`` turns one into the IV
the engine uses when it is not given one. For the AEADs the IV is the 64-bit
sequence number itself (unique per SA, which is all GCM and ChaCha20-Poly1305
need); for AES-CBC, which needs an unpredictable IV (RFC 3602 2.3), it is
the sequence number encrypted under the SA's key (NIST SP 800-38A Appendix C).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from netoffload.engine.ipsec_ip import IPV4_HEADER_LEN, IPV6_HEADER_LEN, OuterHeader
from netoffload.engine.ipsec_sa import (
    REPLAY_WINDOW_MAX,
    REPLAY_WINDOW_MIN,
    SPI_RESERVED_MAX,
    U32_MAX,
    EspError,
    Lifetime,
    SaBase,
    check_int,
)
from netoffload.offload.caps import CryptoAlgorithm, KeySizes

#: The ESP algorithms are the offload layer's crypto algorithms.
EspAlgorithm = CryptoAlgorithm

NAT_T_PORT: Final = 4500
ESP_HEADER_LEN: Final = 8
UDP_HEADER_LEN: Final = 8
ICV_LEN: Final = 16
SALT_LEN: Final = 4
AEAD_IV_LEN: Final = 8
CBC_IV_LEN: Final = 16
HMAC_SHA256_KEY_LEN: Final = 32
_AES_KEY_LENS: Final = {16: KeySizes.BITS_128, 24: KeySizes.BITS_192, 32: KeySizes.BITS_256}
_CHACHA_KEY_LEN: Final = 32
_AEADS: Final = (EspAlgorithm.AES_GCM, EspAlgorithm.CHACHA20_POLY1305)


class EspMode(enum.Enum):
    """Transport mode protects the payload of a packet; tunnel mode the whole packet."""

    TRANSPORT = "transport"
    TUNNEL = "tunnel"


@dataclass(frozen=True, slots=True)
class NatTraversal:
    """UDP encapsulation of ESP (RFC 3948): the ports of the UDP header ESP travels in.

    An inbound SA accepts ESP in UDP sent to ``dst_port`` from any source
    port (a NAT may have changed it).
    """

    src_port: int = NAT_T_PORT
    dst_port: int = NAT_T_PORT

    def __post_init__(self) -> None:
        check_int("NAT-T source port", self.src_port, 1, 0xFFFF)
        check_int("NAT-T destination port", self.dst_port, 1, 0xFFFF)


@dataclass(frozen=True, slots=True)
class EspConfig:
    """Everything that defines an ESP SA. Keys stay out of repr, str and errors."""

    spi: int
    algorithm: EspAlgorithm
    key: bytes = field(repr=False)
    auth_key: bytes | None = field(default=None, repr=False)
    mode: EspMode = EspMode.TRANSPORT
    tunnel_src: IPv4Address | IPv6Address | None = None
    tunnel_dst: IPv4Address | IPv6Address | None = None
    esn: bool = False
    replay_window: int = 64
    nat_t: NatTraversal | None = None
    lifetime: Lifetime | None = None

    def __post_init__(self) -> None:
        check_int("SPI", self.spi, SPI_RESERVED_MAX + 1, U32_MAX)
        check_int("replay window", self.replay_window, REPLAY_WINDOW_MIN, REPLAY_WINDOW_MAX)
        if not isinstance(self.esn, bool):
            raise ValueError("esn is a boolean")
        try:
            algorithm = EspAlgorithm(self.algorithm)
        except (ValueError, TypeError):
            raise ValueError("unknown ESP algorithm") from None
        if algorithm not in (*_AEADS, EspAlgorithm.AES_CBC_HMAC_SHA256):
            raise ValueError(f"ESP needs one algorithm, not {algorithm!r}")
        object.__setattr__(self, "algorithm", algorithm)
        if not isinstance(self.key, bytes | bytearray | memoryview):
            raise ValueError("the key must be bytes")
        object.__setattr__(self, "key", bytes(self.key))
        if self.auth_key is not None:
            if not isinstance(self.auth_key, bytes | bytearray | memoryview):
                raise ValueError("the authentication key must be bytes")
            object.__setattr__(self, "auth_key", bytes(self.auth_key))
        self._check_keys()
        if not isinstance(self.mode, EspMode):
            raise ValueError("mode must be an EspMode")
        if self.mode is EspMode.TUNNEL:
            src, dst = self.tunnel_src, self.tunnel_dst
            if not (
                (isinstance(src, IPv4Address) and isinstance(dst, IPv4Address))
                or (isinstance(src, IPv6Address) and isinstance(dst, IPv6Address))
            ):
                raise ValueError("tunnel mode needs tunnel_src and tunnel_dst of one IP version")
        elif self.tunnel_src is not None or self.tunnel_dst is not None:
            raise ValueError("tunnel endpoints are for tunnel mode only")
        if self.nat_t is not None and not isinstance(self.nat_t, NatTraversal):
            raise ValueError("nat_t must be a NatTraversal")
        if self.lifetime is not None and not isinstance(self.lifetime, Lifetime):
            raise ValueError("lifetime must be a Lifetime")

    def _check_keys(self) -> None:
        n = len(self.key)
        if self.algorithm is EspAlgorithm.AES_GCM:
            if n - SALT_LEN not in _AES_KEY_LENS:
                raise ValueError(
                    f"AES-GCM takes a 16, 24 or 32-byte key and a 4-byte salt, not {n} bytes"
                )
        elif self.algorithm is EspAlgorithm.CHACHA20_POLY1305:
            if n != _CHACHA_KEY_LEN + SALT_LEN:
                raise ValueError(
                    f"ChaCha20-Poly1305 takes a 32-byte key and a 4-byte salt, not {n} bytes"
                )
        else:
            if n not in _AES_KEY_LENS:
                raise ValueError(f"AES-CBC takes a 16, 24 or 32-byte key, not {n} bytes")
            if self.auth_key is None or len(self.auth_key) != HMAC_SHA256_KEY_LEN:
                raise ValueError("AES-CBC with HMAC-SHA-256-128 needs a 32-byte auth_key")
            return
        if self.auth_key is not None:
            raise ValueError("an AEAD algorithm takes no auth_key")

    @property
    def aead(self) -> bool:
        """True for the combined-mode algorithms (AES-GCM, ChaCha20-Poly1305)."""
        return self.algorithm in _AEADS

    @property
    def key_size(self) -> KeySizes:
        """The cipher key size, as a capability record names it."""
        n = len(self.key) - (SALT_LEN if self.aead else 0)
        return _AES_KEY_LENS.get(n, KeySizes.BITS_256)

    @property
    def iv_len(self) -> int:
        """Bytes of IV in every packet."""
        return AEAD_IV_LEN if self.aead else CBC_IV_LEN

    @property
    def align(self) -> int:
        """What the ciphertext (payload, padding, trailer) is padded to a multiple of."""
        return 4 if self.aead else 16

    @property
    def front_len(self) -> int:
        """Bytes before the ESP header that the SA adds: the outer header and the UDP header."""
        outer = 0
        if self.mode is EspMode.TUNNEL:
            outer = IPV4_HEADER_LEN if isinstance(self.tunnel_src, IPv4Address) else IPV6_HEADER_LEN
        return outer + (UDP_HEADER_LEN if self.nat_t is not None else 0)

    def overhead(self, payload_len: int) -> int:
        """Bytes ESP adds to a packet whose protected part is ``payload_len`` bytes
        (the transport payload, or the whole packet in tunnel mode)."""
        pad = -(payload_len + 2) % self.align
        return self.front_len + ESP_HEADER_LEN + self.iv_len + pad + 2 + ICV_LEN

    @property
    def max_overhead(self) -> int:
        """The most ESP can add to any packet (for MSS and path MTU)."""
        return self.front_len + ESP_HEADER_LEN + self.iv_len + self.align - 1 + 2 + ICV_LEN


class SecurityAssociation(SaBase):
    """An ESP SA: ``config`` plus sequence numbers, replay window, lifetimes and counters.

    ``key`` is laid out as ``ip xfrm`` takes it: for AES-GCM (RFC 4106) and
    ChaCha20-Poly1305 (RFC 7634) the cipher key followed by the 4-byte salt;
    for AES-CBC (RFC 3602) the AES key, with the HMAC-SHA-256 key (RFC 4868)
    in ``auth_key``. ``initial_sequence`` is the first outbound number.
    """

    __slots__ = (
        "_aead",
        "_aes",
        "_align",
        "_hmac",
        "_iv_ecb",
        "_iv_len",
        "_nat_t",
        "_nonce_base",
        "_outer",
        "_salt",
        "config",
    )

    error: ClassVar[type[EspError]] = EspError

    def __init__(
        self,
        spi: int,
        algorithm: EspAlgorithm,
        key: bytes,
        *,
        auth_key: bytes | None = None,
        mode: EspMode = EspMode.TRANSPORT,
        tunnel_src: IPv4Address | IPv6Address | None = None,
        tunnel_dst: IPv4Address | IPv6Address | None = None,
        esn: bool = False,
        replay_window: int = 64,
        nat_t: NatTraversal | None = None,
        lifetime: Lifetime | None = None,
        initial_sequence: int = 1,
    ) -> None:
        config = EspConfig(
            spi=spi,
            algorithm=algorithm,
            key=key,
            auth_key=auth_key,
            mode=mode,
            tunnel_src=tunnel_src,
            tunnel_dst=tunnel_dst,
            esn=esn,
            replay_window=replay_window,
            nat_t=nat_t,
            lifetime=lifetime,
        )
        super().__init__(
            config.spi,
            esn=config.esn,
            replay_window=config.replay_window,
            lifetime=config.lifetime,
            initial_sequence=initial_sequence,
        )
        self.config = config
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._aes: algorithms.AES | None = None
        self._hmac: crypto_hmac.HMAC | None = None
        self._iv_ecb: CipherContext | None = None
        self._salt = b""
        self._nonce_base = 0
        # Read per packet: kept as plain attributes.
        self._align = config.align
        self._iv_len = config.iv_len
        self._nat_t = config.nat_t
        if config.algorithm is EspAlgorithm.AES_GCM:
            self._aead = AESGCM(config.key[:-SALT_LEN])
        elif config.algorithm is EspAlgorithm.CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(config.key[:-SALT_LEN])
        else:
            assert config.auth_key is not None
            self._aes = algorithms.AES(config.key)
            self._hmac = crypto_hmac.HMAC(config.auth_key, hashes.SHA256())
            self._iv_ecb = Cipher(algorithms.AES(config.key), modes.ECB()).encryptor()
        if self._aead is not None:
            self._salt = config.key[-SALT_LEN:]
            self._nonce_base = int.from_bytes(self._salt, "big") << 64
        self._outer: OuterHeader | None = None
        if config.mode is EspMode.TUNNEL:
            assert config.tunnel_src is not None and config.tunnel_dst is not None
            self._outer = OuterHeader(config.tunnel_src, config.tunnel_dst)

    @classmethod
    def from_config(cls, config: EspConfig, *, initial_sequence: int = 1) -> SecurityAssociation:
        """A fresh SA (new counters, empty window) with ``config``."""
        return cls(
            config.spi,
            config.algorithm,
            config.key,
            auth_key=config.auth_key,
            mode=config.mode,
            tunnel_src=config.tunnel_src,
            tunnel_dst=config.tunnel_dst,
            esn=config.esn,
            replay_window=config.replay_window,
            nat_t=config.nat_t,
            lifetime=config.lifetime,
            initial_sequence=initial_sequence,
        )

    def twin(self) -> SecurityAssociation:
        """A fresh SA with the same configuration: the other end of this one."""
        return SecurityAssociation.from_config(self.config)

    @property
    def algorithm(self) -> EspAlgorithm:
        return self.config.algorithm

    @property
    def mode(self) -> EspMode:
        return self.config.mode

    @property
    def nat_t(self) -> NatTraversal | None:
        return self.config.nat_t

    @property
    def iv_len(self) -> int:
        return self.config.iv_len

    def iv_for(self, seq: int) -> bytes:
        """The IV this SA uses for sequence number ``seq`` when none is given."""
        if self._iv_ecb is None:
            return seq.to_bytes(AEAD_IV_LEN, "big")
        return self._iv_ecb.update(seq.to_bytes(CBC_IV_LEN, "big"))

    def __repr__(self) -> str:
        c = self.config
        extra = ""
        if c.mode is EspMode.TUNNEL:
            extra = f", tunnel {c.tunnel_src} -> {c.tunnel_dst}"
        if c.nat_t is not None:
            extra += f", udp {c.nat_t.src_port} -> {c.nat_t.dst_port}"
        return (
            f"SecurityAssociation(spi={c.spi:#010x}, {c.algorithm.name}, {c.mode.value}"
            f"{extra}, esn={c.esn}, window={c.replay_window}, next_seq={self.next_seq})"
        )

    __str__ = __repr__
