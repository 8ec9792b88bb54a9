"""`netoffload nc --sa FILE`: ESP from the command line.

Two `nc` processes, each with its own stack on its own TAP, the TAPs bridged in
a private namespace: what one sends the other receives, every packet
protected on the way. And the Linux kernel's xfrm as a peer, where this kernel
has ESP (detected by trying to add a state; it skips naming what is missing).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from netoffload.netns import Netns
from tests.stack.kernel_peer import cli_popen, wait_for_link

pytestmark = pytest.mark.privileged

A, B = "198.18.0.1", "198.18.0.2"
KEY_AB = "000102030405060708090a0b0c0d0e0f73616c74"
KEY_BA = "101112131415161718191a1b1c1d1e1f74617273"


def sa_file(path: Path, local: str, remote: str, out: tuple[int, str], inb: tuple[int, str]) -> str:
    path.write_text(
        f"""
[[policy]]
local = "{local}"
remote = "{remote}"

[policy.out]
spi = {out[0]}
algorithm = "aes-gcm"
key = "{out[1]}"

[policy.in]
spi = {inb[0]}
algorithm = "aes-gcm"
key = "{inb[1]}"
"""
    )
    return str(path)


def test_two_nc_stacks_talk_esp_through_a_bridge(tmp_path: Path) -> None:
    data = os.urandom(1_000_000)
    conf_a = sa_file(tmp_path / "a.toml", A, B, (0x1000, KEY_AB), (0x2000, KEY_BA))
    conf_b = sa_file(tmp_path / "b.toml", B, A, (0x2000, KEY_BA), (0x1000, KEY_AB))
    with Netns() as ns:
        ns.add_bridge("nsobr0")
        ns.set_link("nsobr0", up=True)
        received = (tmp_path / "received").open("wb")  # a pipe nobody reads would fill up
        server = cli_popen(
            ns, "nc", "-l", "--device", "tap:nsotb", "--address", f"{B}/24",
            "--sa", conf_b, "--stats", "5001", stdin=subprocess.DEVNULL, stdout=received,
        )  # fmt: skip
        try:
            wait_for_link(ns, "nsotb", server)
            ns.set_master("nsotb", "nsobr0")
            client = cli_popen(
                ns, "nc", "--device", "tap:nsota", "--address", f"{A}/24", "--sa", conf_a,
                "--stats", "--timeout", "30", B, "5001",
            )  # fmt: skip
            try:
                wait_for_link(ns, "nsota", client)
                ns.set_master("nsota", "nsobr0")
                _, client_err = client.communicate(data, timeout=60)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.communicate()
            _, server_err = server.communicate(timeout=60)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
            received.close()
    got = (tmp_path / "received").read_bytes()
    assert client.returncode == 0, client_err[-2000:]
    assert server.returncode == 0, server_err[-2000:]
    assert got == data
    for err in (client_err, server_err):
        for key in (KEY_AB, KEY_BA):  # neither the key nor the cipher key alone
            for secret in (key, key[:-8]):
                assert secret not in err.decode().lower()
        stats = json.loads(err.decode().strip().splitlines()[-1])
        ipsec = stats["ipsec"]
        assert ipsec["policies"] == 1 and ipsec["protected_out"] > 0
        assert ipsec["protected_in"] > 0 and ipsec["drops"] == {}
        assert stats["ip"]["drops"].get("ipsec_policy", 0) == 0
        host = stats["interfaces"][0]["host"]["tasks"]
        assert host["encrypt"] > 0 and host["decrypt"] > 0  # a TAP has no IPsec: the host did it


def test_a_missing_or_bad_sa_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[policy]]\n[policy.out]\nspi = 7\nalgorithm = "aes-gcm"\nkey = "00"\n')
    for path, message in ((tmp_path / "none.toml", "cannot read"), (bad, "SPI 7 is outside")):
        done = subprocess.run(
            [
                sys.executable,
                "-m", "netoffload.cli", "nc", "--device", "softnic", "--address", f"{A}/24",
                "--sa", str(path), B, "80",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert err.startswith("Error: ") and message in err and err.count("\n") == 1


def _kernel_esp(ns: Netns) -> str | None:
    """None when this kernel takes an ESP state with AES-GCM, else what it said."""
    try:
        ns.exec(
            "ip", "xfrm", "state", "add", "src", A, "dst", B, "proto", "esp", "spi", "0x3000",
            "mode", "transport", "aead", "rfc4106(gcm(aes))", "0x" + KEY_AB, "128",
        )  # fmt: skip
    except Exception as exc:  # the command's one-line error
        return str(exc)
    ns.exec("ip", "xfrm", "state", "flush")
    return None


def test_the_kernel_xfrm_as_the_peer(tmp_path: Path) -> None:
    with Netns() as ns:
        missing = _kernel_esp(ns)
        if missing is not None:
            pytest.skip(f"this kernel has no ESP with AES-GCM (CONFIG_INET_ESP, GCM): {missing}")
        for args in (
            ("state", "add", "src", A, "dst", B, "proto", "esp", "spi", "0x1000", "mode",
             "transport", "aead", "rfc4106(gcm(aes))", "0x" + KEY_AB, "128"),
            ("state", "add", "src", B, "dst", A, "proto", "esp", "spi", "0x2000", "mode",
             "transport", "aead", "rfc4106(gcm(aes))", "0x" + KEY_BA, "128"),
            ("policy", "add", "src", A, "dst", B, "dir", "out", "tmpl", "proto", "esp",
             "mode", "transport"),
            ("policy", "add", "src", B, "dir", "in", "tmpl", "proto", "esp", "mode", "transport"),
        ):  # fmt: skip
            ns.exec("ip", "xfrm", *args)
        conf = sa_file(tmp_path / "ours.toml", B, A, (0x2000, KEY_BA), (0x1000, KEY_AB))
        with ns.entered():
            srv = socket.socket()
        srv.bind(("0.0.0.0", 5002))
        srv.listen(1)
        srv.settimeout(30)
        got = bytearray()

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                while chunk := conn.recv(1 << 16):
                    got.extend(chunk)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        data = os.urandom(200_000)
        proc = cli_popen(
            ns, "nc", "--device", "tap:nsotx", "--address", f"{B}/24", "--peer-address",
            f"{A}/24", "--sa", conf, "--stats", A, "5002",
        )  # fmt: skip
        _, err = proc.communicate(data, timeout=60)
        thread.join(30)
        srv.close()
        assert proc.returncode == 0, err[-2000:]
        assert bytes(got) == data
        # The kernel opened every packet of ours: no ESP it could not match or verify.
        counters = dict(
            line.split() for line in ns.exec("cat", "/proc/net/xfrm_stat").splitlines() if line
        )
        for name in ("XfrmInNoStates", "XfrmInStateProtoError", "XfrmInNoPols"):
            assert counters.get(name, "0") == "0", (name, counters)
