"""`netoffload bench esp`: ESP encryption and decryption beside the AES-GCM call alone.

Measured side by side in one run, on one thread pinned to one core, for
batches of 1400-byte and 8000-byte (jumbo-frame) IPv4 packets, AES-128-GCM,
transport mode:

* ``encrypt``: ``encrypt_batch`` over a list of packets. The result holds the
  finished packets in row blocks, one buffer per block, as a device's ring
  would; ``encrypt_views`` also makes a view of every packet (what a
  consumer that wants one object per packet adds), ``encrypt_matrix`` takes
  the packets as the rows of one matrix (the segments of a super-packet),
  ``encrypt_single`` calls ``encrypt`` once per packet.
* ``decrypt``: ``decrypt_batch``, with a fresh receiving SA per batch (its
  replay window would refuse the same packets twice).
* ``openssl`` / ``openssl_decrypt``: the ``cryptography`` package's
  ``AESGCM.encrypt`` / ``decrypt`` alone on buffers of the same sizes: what
  OpenSSL costs through the same binding, with no ESP around it.

GB/s count the IP packets' bytes (10**9 bytes per second), before encryption
and after decryption. Each figure is the best of several repetitions. The
issue's target is ``encrypt`` at half the ``openssl`` rate or more.

* ``host_cpu_s_per_gb_offload`` / ``_host``: this process's CPU seconds per
  GB of 64 KiB TCP super-packets (MSS 1400) that a SoftNic segments,
  checksums and encrypts in one pass (each super-packet one descriptor with
  the SA's handle), against the host doing all three itself with the same
  engine and handing the SoftNic finished segments. The SoftNic's cable drops
  every frame, so only the sending side is measured; the firmware runs in a
  process of its own (the NIC's processor) and is not counted.
  ``host_cpu_ratio_host_over_offload`` is the host's saving; the target is 3x.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from ipaddress import IPv4Address

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.table import Table

from netoffload.bench import number, one_core
from netoffload.engine.esp import (
    EspAlgorithm,
    SecurityAssociation,
    decrypt_batch,
    encrypt,
    encrypt_batch,
)
from netoffload.engine.esp_rows import ByteMatrix
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.wire import IpProtocol, Ipv4Repr, UdpRepr

SIZES = (1400, 8000)
#: Packets per batch, as ``bench checksum`` batches its frames.
BATCH_PACKETS = 256
#: Issue acceptance target: ESP encryption at least this fraction of the AES-GCM call alone.
TARGET_RATIO = 0.5
#: Issue acceptance target: the SoftNic doing segment-and-encrypt saves the host this much.
OFFLOAD_TARGET = 3.0
_SRC = IPv4Address("198.18.0.1")
_DST = IPv4Address("198.18.0.2")
_SPI = 0x0000_1000


def _measure(
    calls: list[tuple[str, Callable[[], object]]],
    nbytes: int,
    budget_ns: int,
    repetitions: int,
    tick: Callable[[], None],
) -> dict[str, float]:
    """GB/s of each call (each handling ``nbytes`` bytes): the best of ``repetitions``
    timings of enough calls to fill about ``budget_ns``. The calls take turns within each
    repetition, so a burst of load elsewhere on the machine does not land on one alone."""
    iterations: dict[str, int] = {}
    for name, call in calls:
        call()  # warm up caches and any lazy set-up
        start = time.perf_counter_ns()
        call()
        iterations[name] = max(1, budget_ns // max(time.perf_counter_ns() - start, 1))
    best = dict.fromkeys(iterations, math.inf)
    for _ in range(repetitions):
        for name, call in calls:
            start = time.perf_counter_ns()
            for _ in range(iterations[name]):
                call()
            best[name] = min(best[name], time.perf_counter_ns() - start)
        tick()
    return {name: nbytes * iterations[name] / max(best[name], 1) for name in best}


def _packets(size: int, rng: random.Random) -> list[bytes]:
    """``BATCH_PACKETS`` IPv4/UDP packets of ``size`` bytes, from Reprs."""
    payload_len = size - 20 - 8
    udp = UdpRepr(src_port=40000, dst_port=40001)
    out = []
    for i in range(BATCH_PACKETS):
        datagram = udp.to_bytes(rng.randbytes(payload_len), src=_SRC, dst=_DST)
        ip = Ipv4Repr(_SRC, _DST, IpProtocol.UDP, len(datagram), ident=i, dont_frag=True)
        out.append(ip.to_bytes(datagram))
    return out


#: What is timed, per packet size; each call handles one batch.
_CALLS = (
    "encrypt",  # encrypt_batch over a list of packets: the finished packets in row blocks
    "encrypt_views",  # the same, then a view of every packet (what a copying consumer adds)
    "encrypt_matrix",  # encrypt_batch over a matrix of packets (the segments of a super-packet)
    "encrypt_single",  # encrypt() once per packet
    "decrypt",  # decrypt_batch with a fresh receiving SA (a window refuses packets twice)
    "openssl",  # AESGCM.encrypt alone on each packet's bytes
    "openssl_decrypt",  # AESGCM.decrypt alone
)


def _calls(
    sa: SecurityAssociation,
    cipher: AESGCM,
    *,
    packets: list[bytes],
    matrix: ByteMatrix,
    sealed: list[bytes],
    ciphertexts: list[bytes],
    nonce: bytes,
    aad: bytes,
) -> list[tuple[str, Callable[[], object]]]:
    def openssl() -> None:
        seal = cipher.encrypt
        for p in packets:
            seal(nonce, p, aad)

    def openssl_decrypt() -> None:
        unseal = cipher.decrypt
        for c in ciphertexts:
            unseal(nonce, c, aad)

    def single() -> None:
        for p in packets:
            encrypt(sa, p)

    calls: dict[str, Callable[[], object]] = {
        "encrypt": lambda: encrypt_batch(sa, packets),
        "encrypt_views": lambda: encrypt_batch(sa, packets).packets,
        "encrypt_matrix": lambda: encrypt_batch(sa, matrix),
        "encrypt_single": single,
        "decrypt": lambda: decrypt_batch(sa.twin(), sealed),
        "openssl": openssl,
        "openssl_decrypt": openssl_decrypt,
    }
    return [(name, calls[name]) for name in _CALLS]


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, object]:
    """Measure and return the JSON result (GB/s figures are 10**9 bytes per second)."""
    budget_ns = 20_000_000 if quick else 60_000_000
    repetitions = 5 if quick else 15
    progress.stage("esp", repetitions * len(SIZES))
    rng = random.Random(4303)
    key = rng.randbytes(16 + 4)  # AES-128 key and salt, as ip xfrm takes them
    cipher = AESGCM(key[:16])  # the same key, for the ciphertexts the decrypt baseline opens
    nonce = rng.randbytes(12)
    aad = _SPI.to_bytes(4, "big") + (1).to_bytes(4, "big")
    result: dict[str, object] = {}
    agree = True
    done = 0
    with one_core():
        for size in SIZES:
            packets = _packets(size, rng)
            matrix = np.frombuffer(b"".join(packets), dtype=np.uint8).reshape(-1, size)
            nbytes = size * BATCH_PACKETS
            # 32-bit sequence numbers do not run out in any number of repetitions here.
            sender = SecurityAssociation(_SPI, EspAlgorithm.AES_GCM, key)
            sealed = [bytes(p) for p in encrypt_batch(sender, packets).packets if p is not None]
            opened = decrypt_batch(sender.twin(), sealed).packets
            agree = agree and [bytes(p) for p in opened if p is not None] == packets
            ciphertexts = [cipher.encrypt(nonce, p, aad) for p in packets]
            calls = _calls(
                sender,
                cipher,
                packets=packets,
                matrix=matrix,
                sealed=sealed,
                ciphertexts=ciphertexts,
                nonce=nonce,
                aad=aad,
            )

            def tick() -> None:
                nonlocal done
                done += 1
                progress.update(done)

            rates = _measure(calls, nbytes, budget_ns, repetitions, tick)
            result |= {f"{name}_gbytes_per_s_{size}": rate for name, rate in rates.items()}
            result |= {
                f"encrypt_ratio_vs_openssl_{size}": rates["encrypt"] / rates["openssl"],
                f"decrypt_ratio_vs_openssl_{size}": rates["decrypt"] / rates["openssl_decrypt"],
            }
    progress.stage("esp: SoftNic segment-and-encrypt vs the host", 2)
    result |= _offload_cpu(quick, key, progress)
    return result | {
        "algorithm": "AES-128-GCM",
        "mode": "ipv4 transport",
        "batch_packets": BATCH_PACKETS,
        "packet_bytes": list(SIZES),
        "repetitions": repetitions,
        "results_agree": agree,
        "target_ratio_vs_openssl": TARGET_RATIO,
        "quick": quick,
    }


def _offload_cpu(quick: bool, key: bytes, progress: Progress) -> dict[str, object]:
    """Host CPU per GB: SoftNic segment-and-encrypt against the host doing it (module doc)."""
    from netoffload.demo.flow import BulkFlowGenerator, FlowSpec
    from netoffload.device.cable import Impairments
    from netoffload.device.softnic import SoftNic, softnic_pair
    from netoffload.engine.esp_sa import EspConfig
    from netoffload.host import HostOffload
    from netoffload.offload import Packet, Selection, Task

    config = EspConfig(spi=_SPI, algorithm=EspAlgorithm.AES_GCM, key=key)
    spec = FlowSpec(protocol="tcp", segment_bytes=1400, segments=46)
    total = (32 if quick else 128) * 1024 * 1024
    gen = BulkFlowGenerator(os.urandom(total), spec)
    frames = [bytes(gen.write(bytearray(gen.frame_len(i)), i).data) for i in range(len(gen))]
    segments = [-(-(len(f) - spec.header_len) // spec.segment_bytes) for f in frames]
    out: dict[str, object] = {}
    lost = Impairments(loss=1.0, mtu=None)  # only the sending side is measured
    for done, offload in enumerate((True, False), 1):
        with softnic_pair(lost, names=("esp-a", "esp-b")) as (nic, _):
            nic.enable(Selection.everything(nic.capabilities()))
            host = HostOffload(nic, allow=None if offload else frozenset())
            host.add_outbound_sa(0, config)
            seq = 1
            batch: list[Packet] = []
            cpu0 = time.process_time()
            for i, frame in enumerate(frames):
                batch.append(Packet(frame, gen.request(i).encrypted(0, seq)))
                seq += segments[i]
                if len(batch) == 16 or i == len(frames) - 1:
                    host.send(batch)
                    batch = []
                    while host.backlog:
                        if host.push() == 0:
                            nic.wait(0.05, for_tx=True)
            nic.flush()
            cpu = time.process_time() - cpu0
            stats = nic.stats()
            assert isinstance(nic, SoftNic)
            label = "offload" if offload else "host"
            out[f"host_cpu_s_per_gb_{label}"] = cpu / (total / 1e9)
            out[f"encrypt_done_by_{label}"] = (
                stats.tasks.get(Task.ENCRYPT.label, 0)
                if offload
                else host.stats.tasks.get(Task.ENCRYPT.label, 0)
            )
        progress.update(done)
    out["host_cpu_ratio_host_over_offload"] = number(out, "host_cpu_s_per_gb_host") / max(
        number(out, "host_cpu_s_per_gb_offload"), 1e-9
    )
    out["offload_super_packets"] = len(frames)
    return out


def render(result: dict[str, object], console: Console) -> None:
    """Print the result as a table."""
    table = Table(
        title=(
            f"ESP, {result['algorithm']}, {result['mode']}, batches of {result['batch_packets']}"
            f" (one core, best of {result['repetitions']} runs), GB/s"
        )
    )
    target = number(result, "target_ratio_vs_openssl")
    table.add_column("")
    for size in SIZES:
        table.add_column(f"{size} B", justify="right")
    rows = (
        ("ESP encrypt, batch", "encrypt_gbytes_per_s"),
        ("  same, with a view per packet", "encrypt_views_gbytes_per_s"),
        ("  same, packets as matrix rows", "encrypt_matrix_gbytes_per_s"),
        ("  encrypt() per packet", "encrypt_single_gbytes_per_s"),
        ("AESGCM.encrypt alone", "openssl_gbytes_per_s"),
        ("ESP encrypt / AESGCM alone", "encrypt_ratio_vs_openssl"),
        ("ESP decrypt, batch", "decrypt_gbytes_per_s"),
        ("AESGCM.decrypt alone", "openssl_decrypt_gbytes_per_s"),
        ("ESP decrypt / AESGCM alone", "decrypt_ratio_vs_openssl"),
    )
    for label, key in rows:
        cells = []
        for size in SIZES:
            value = number(result, f"{key}_{size}")
            cell = f"{value:.2f}"
            if key == "encrypt_ratio_vs_openssl":
                mark = "[green]met[/]" if value >= target else "[red]missed[/]"
                cell += f" (target {target:.1f}: {mark})"
            cells.append(cell)
        table.add_row(label, *cells)
    console.print(table)
    console.print(
        f"64 KiB TSO super-packets segmented and encrypted: host CPU "
        f"{number(result, 'host_cpu_s_per_gb_offload'):.2f} s/GB with the SoftNic doing it in one "
        f"pass, {number(result, 'host_cpu_s_per_gb_host'):.2f} s/GB with the host doing it: "
        f"[bold]{number(result, 'host_cpu_ratio_host_over_offload'):.1f}x[/] "
        f"(target {OFFLOAD_TARGET:.0f}x)"
    )
    if not result["results_agree"]:
        console.print("[red]decrypting our own packets did not give them back[/]")
