"""Security policies from a TOML file (``netoffload nc --sa FILE``, ``ping --sa FILE``).

One ``[[policy]]`` table per protected flow set: a selector, and an SA for
each direction it covers. Keys are hex, laid out as ``ip xfrm`` takes them
(for AES-GCM and ChaCha20-Poly1305 the cipher key followed by the 4-byte salt).

```toml
[[policy]]
local = "198.18.0.2"            # prefixes or addresses; omit for "any"
remote = "198.18.0.1"
protocol = "tcp"                # tcp, udp, icmp, ipv6-icmp or a number; omit for all
# local-port = 5000             # TCP/UDP ports; omit for any

[policy.out]                    # what we send: encrypted with this SA
spi = 0x1000
algorithm = "aes-gcm"           # aes-gcm, chacha20-poly1305, aes-cbc-hmac-sha256
key = "000102030405060708090a0b0c0d0e0f73616c74"
# auth-key = "..."              # aes-cbc-hmac-sha256 only (32 bytes)
# mode = "tunnel"               # with tunnel-src and tunnel-dst
# esn = true
# replay-window = 64
# nat-t = true                  # UDP encapsulation, port 4500 (or nat-t-port = N)

[policy.in]                     # what we receive: must be protected by this SA
spi = 0x2000
algorithm = "aes-gcm"
key = "..."
```

Every error is one ``ValueError`` line naming the table and the field, never
a key's bytes.
"""

from __future__ import annotations

import tomllib
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from netoffload.engine.esp_sa import EspAlgorithm, EspConfig, EspMode, NatTraversal
from netoffload.engine.ipsec_sa import Lifetime
from netoffload.stack.ipsec import SecurityPolicy, Selector

ALGORITHMS = {
    "aes-gcm": EspAlgorithm.AES_GCM,
    "chacha20-poly1305": EspAlgorithm.CHACHA20_POLY1305,
    "aes-cbc-hmac-sha256": EspAlgorithm.AES_CBC_HMAC_SHA256,
}
_SA_KEYS = {
    "spi",
    "algorithm",
    "key",
    "auth-key",
    "mode",
    "tunnel-src",
    "tunnel-dst",
    "esn",
    "replay-window",
    "nat-t",
    "nat-t-port",
    "soft-bytes",
    "hard-bytes",
    "soft-packets",
    "hard-packets",
}
_LIFETIME_KEYS = ("soft-bytes", "hard-bytes", "soft-packets", "hard-packets")
_POLICY_KEYS = {"local", "remote", "protocol", "local-port", "remote-port", "priority", "out", "in"}


def load_policies(path: str | Path) -> list[SecurityPolicy]:
    """The policies in the TOML file at ``path``; ``ValueError`` (one line) when it is not
    a valid configuration."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not TOML: {exc}") from None
    return parse_policies(data, str(path))


def parse_policies(data: dict[str, Any], where: str = "config") -> list[SecurityPolicy]:
    unknown = set(data) - {"policy"}
    if unknown:
        raise ValueError(f"{where}: unknown table {sorted(unknown)[0]!r} (only [[policy]])")
    tables = data.get("policy", [])
    if not isinstance(tables, list) or not tables:
        raise ValueError(f"{where}: no [[policy]] table")
    return [_policy(t, f"{where}: policy {i + 1}") for i, t in enumerate(tables)]


def _policy(table: Any, where: str) -> SecurityPolicy:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: a policy is a table")
    unknown = set(table) - _POLICY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    if "out" not in table and "in" not in table:
        raise ValueError(f"{where}: needs an [policy.out] or [policy.in] SA")
    try:
        selector = Selector.parse(
            local=table.get("local"),
            remote=table.get("remote"),
            protocol=table.get("protocol"),
            local_port=table.get("local-port"),
            remote_port=table.get("remote-port"),
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    priority = table.get("priority", 0)
    if not isinstance(priority, int):
        raise ValueError(f"{where}: priority is an integer")
    return SecurityPolicy(
        selector,
        outbound=_sa(table["out"], f"{where} out") if "out" in table else None,
        inbound=_sa(table["in"], f"{where} in") if "in" in table else None,
        priority=priority,
    )


def _hex(value: Any, what: str, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{where}: {what} is a hex string")
    text = value.removeprefix("0x").replace(":", "")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{where}: {what} is not hex") from None


def _sa(table: Any, where: str) -> EspConfig:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: an SA is a table")
    unknown = set(table) - _SA_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    for required in ("spi", "algorithm", "key"):
        if required not in table:
            raise ValueError(f"{where}: missing {required!r}")
    name = table["algorithm"]
    if name not in ALGORITHMS:
        raise ValueError(f"{where}: unknown algorithm {name!r} ({', '.join(ALGORITHMS)})")
    mode_name = table.get("mode", "transport")
    if mode_name not in ("transport", "tunnel"):
        raise ValueError(f"{where}: mode is transport or tunnel, not {mode_name!r}")
    extra: dict[str, Any] = {}
    try:
        if mode_name == "tunnel":
            extra["tunnel_src"] = ip_address(table["tunnel-src"])
            extra["tunnel_dst"] = ip_address(table["tunnel-dst"])
        if table.get("nat-t") or "nat-t-port" in table:
            port = int(table.get("nat-t-port", 4500))
            extra["nat_t"] = NatTraversal(port, port)
        limits = {
            k: table.get(k) for k in ("soft-bytes", "hard-bytes", "soft-packets", "hard-packets")
        }
        if any(v is not None for v in limits.values()):
            extra["lifetime"] = Lifetime(*limits.values())
        return EspConfig(
            spi=table["spi"],
            algorithm=ALGORITHMS[name],
            key=_hex(table["key"], "key", where),
            auth_key=_hex(table["auth-key"], "auth-key", where) if "auth-key" in table else None,
            mode=EspMode(mode_name),
            esn=table.get("esn", False),
            replay_window=table.get("replay-window", 64),
            **extra,
        )
    except KeyError as exc:
        raise ValueError(f"{where}: tunnel mode needs {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None


__all__ = ["ALGORITHMS", "load_policies", "parse_policies"]
