"""`netoffload run -- python ...`: unmodified programs on user-level sockets, in a namespace
over ``--device tap:nsotap0`` (our stack 198.18.0.2, the kernel 198.18.0.1).

The issue's acceptance, each against the kernel: ``python -m http.server`` with no
flags serving 100 MB byte-exact to urllib and curl; an unmodified urllib client
downloading 100 MB from the kernel's http.server; an https client against a
kernel TLS server; an asyncio echo server with 200 concurrent clients; and
AF_UNIX, loopback and a destination not behind the TAP going through the OS.
The path counters (control socket, and the summary line on exit) show every
IP byte on the user-level path where it should be.
"""

from __future__ import annotations

import datetime
import filecmp
import functools
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner

from netoffload.cli import main
from netoffload.device.xdp import af_xdp_missing
from netoffload.netns import Netns
from tests.stack.kernel_peer import connect_when_listening, kernel_socket, tail

KERNEL, OURS = "198.18.0.1", "198.18.0.2"
RUN = (
    "run",
    "--device", "tap:nsotap0",
    "--address", f"{OURS}/24",
    "--peer-address", f"{KERNEL}/24",
)  # fmt: skip
SIZE = 100_000_000


class Running:
    """A ``netoffload run`` in the background; stdout and stderr in files."""

    def __init__(self, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes]) -> None:
        self.proc = proc
        self.out = out
        self.err = err

    def finish(self, timeout_s: float = 60, *, interrupt: bool = False) -> tuple[int, str, str]:
        if interrupt:
            self.proc.send_signal(signal.SIGINT)
        try:
            status = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"netoffload run did not finish: {tail(self.err)}")
        self.out.seek(0)
        self.err.seek(0)
        return (
            status,
            self.out.read().decode(errors="replace"),
            self.err.read().decode(errors="replace"),
        )


@contextmanager
def running(
    ns: Netns, *args: str, cwd: str | None = None, device: tuple[str, ...] = RUN
) -> Iterator[Running]:
    """``netoffload run`` over ``device`` (our TAP by default) with ``args``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = ns.popen(
            [sys.executable, "-m", "netoffload.cli", *device, *args],
            stdin=subprocess.DEVNULL,
            stdout=out.fileno(),
            stderr=err.fileno(),
            cwd=cwd,
        )
        try:
            yield Running(proc, out, err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def summary_of(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("netoffload run:")]
    assert len(lines) == 1, stderr
    return lines[0]


def stats_of(stderr: str) -> dict[str, Any]:
    """The JSON object ``--stats`` prints last."""
    value = json.loads(stderr.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


def assert_all_user_level(stats: dict[str, Any], at_least: int) -> None:
    """Every IP byte took the user-level path, and at least ``at_least`` of them."""
    user, osp = stats["paths"]["user_level"], stats["paths"]["os"]
    assert user["bytes_sent"] + user["bytes_received"] >= at_least
    assert osp["inet_bytes_sent"] == osp["inet_bytes_received"] == 0
    assert stats["user_level_bytes_fraction"] == 1.0


@pytest.fixture(scope="module")
def big_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "big.bin"
        path.write_bytes(os.urandom(SIZE))
        yield path


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- arguments (no privileges) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--device", "softnic", "--address", "198.18.0.2/24"], "give the program"),
        (["run", "--device", "softnic", "--", "ruby", "app.rb"], "not a Python interpreter"),
        (["run", "--device", "softnic", "--", "python", "-X", "dev", "a.py"], "not supported"),
        (["run", "--address", "198.18.0.2/24", "--", "python", "a.py"], "give a device"),
        (["run", "--config", "/nonexistent.toml", "--", "python", "a.py"], "nonexistent"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_a_config_file_with_an_unknown_key_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('device = "softnic"\nroutes = ["x"]\n')
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--", "python", "a.py"])
    assert result.exit_code != 0 and "unknown key 'routes'" in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- the acceptance, against the kernel --------------------------------------------------------


@pytest.mark.privileged
def test_http_server_with_no_flags_serves_100_mb_to_urllib_and_curl(big_file: Path) -> None:
    name = f"httpd{os.getpid()}"
    with (
        Netns() as ns,
        running(
            ns, "--name", name, "--", "python", "-m", "http.server", cwd=str(big_file.parent)
        ) as run,
    ):
        connect_when_listening(ns, OURS, 8000).close()
        url = f"http://{OURS}:8000/big.bin"
        with ns.entered(), urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        assert len(body) == SIZE and body == big_file.read_bytes()
        del body
        downloads = 1
        if shutil.which("curl") is not None:
            with tempfile.TemporaryDirectory() as directory:
                target = Path(directory) / "got.bin"
                ns.exec("curl", "-sS", "--max-time", "60", "-o", str(target), url)
                assert filecmp.cmp(target, big_file, shallow=False)
            downloads += 1
        shown = CliRunner().invoke(main, ["stats", name, "--json"])  # `netoffload stats NAME`
        assert shown.exit_code == 0, shown.output
        stats = json.loads(shown.stdout)
        assert_all_user_level(stats, downloads * SIZE)
        assert {s["path"] for s in stats["sockets"] if s["family"] != "AF_UNIX"} == {"user_level"}
        assert stats == stats | {"sockets_listed": len(stats["sockets"])}
        assert stats["paths"]["user_level"]["bytes_sent"] >= downloads * SIZE
        assert stats["selections"].get("user_level/bind") == 1  # the wildcard bind
        status, _out, err = run.finish(interrupt=True)
    assert status == 0, err
    assert "Traceback" not in err
    assert "user_level_bytes_fraction 1.0000" in summary_of(err)


@pytest.mark.privileged
def test_urllib_client_downloads_100_mb_from_a_kernel_http_server(
    big_file: Path, tmp_path: Path
) -> None:
    client = _script(
        tmp_path,
        "client.py",
        """
        import hashlib, sys, urllib.request
        with urllib.request.urlopen(sys.argv[1], timeout=30) as response:
            body = response.read()
        print(len(body), hashlib.sha256(body).hexdigest())
        """,
    )
    with Netns() as ns:
        server = ns.popen(
            [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(big_file.parent),
        )
        try:
            connect_when_listening(ns, "127.0.0.1", 8080).close()
            url = f"http://{KERNEL}:8080/big.bin"
            with running(ns, "--stats", "--", "python", client, url) as run:
                status, out, err = run.finish()
        finally:
            server.terminate()
            server.wait(10)
    assert status == 0, err
    expected = hashlib.sha256(big_file.read_bytes()).hexdigest()
    assert out.split() == [str(SIZE), expected]
    stats = stats_of(err)
    assert_all_user_level(stats, SIZE)
    assert stats["paths"]["user_level"]["bytes_received"] >= SIZE


def _self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 198.18.0.1 and its key, made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netoffload test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(KERNEL))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.mark.privileged
def test_https_client_against_a_kernel_tls_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    body = os.urandom(3_000_000)
    (site / "file.bin").write_bytes(body)
    client = _script(
        tmp_path,
        "https_client.py",
        """
        import hashlib, ssl, sys, urllib.request
        context = ssl.create_default_context(cafile=sys.argv[2])
        with urllib.request.urlopen(sys.argv[1], timeout=30, context=context) as response:
            data = response.read()
        print(len(data), hashlib.sha256(data).hexdigest())
        """,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    with Netns() as ns:
        with ns.entered():
            server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"https://{KERNEL}:8443/file.bin"
            with running(ns, "--stats", "--", "python", client, url, cert) as run:
                status, out, err = run.finish()
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
    assert status == 0, err
    assert out.split() == [str(len(body)), hashlib.sha256(body).hexdigest()]
    assert_all_user_level(stats_of(err), len(body))


ECHO_SERVER = """
import asyncio, sys

CLIENTS = int(sys.argv[1])

async def main():
    done = asyncio.Event()
    served = 0

    async def handle(reader, writer):
        nonlocal served
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        served += 1
        if served == CLIENTS:
            done.set()

    server = await asyncio.start_server(handle, port=9000, backlog=256)
    print("ready", flush=True)
    async with server:
        await asyncio.wait_for(done.wait(), 120)
    print("served", served, flush=True)

asyncio.run(main())
"""

ECHO_CLIENTS = """
import asyncio, random, sys

HOST, CLIENTS = sys.argv[1], int(sys.argv[2])

async def one(i):
    data = random.Random(i).randbytes(20_000)
    reader, writer = await asyncio.open_connection(HOST, 9000)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    got = await reader.read(-1)
    writer.close()
    return got == data

async def main():
    results = await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in range(CLIENTS))), 120
    )
    print(sum(results))

asyncio.run(main())
"""


@pytest.mark.privileged
def test_asyncio_echo_server_handles_200_concurrent_clients(tmp_path: Path) -> None:
    clients = 200
    server = _script(tmp_path, "echo_server.py", ECHO_SERVER)
    client = _script(tmp_path, "echo_clients.py", ECHO_CLIENTS)
    with Netns() as ns, running(ns, "--stats", "--", "python", server, str(clients)) as run:
        connect_when_listening(ns, OURS, 9000).close()  # one more connection to serve
        output = ns.exec(sys.executable, client, OURS, str(clients - 1))
        assert output.split() == [str(clients - 1)]
        status, out, err = run.finish()
    assert status == 0, err
    assert out.split() == ["ready", "served", str(clients)]
    stats = stats_of(err)
    assert_all_user_level(stats, 2 * 20_000 * (clients - 1))
    assert stats["selections"]["user_level/accept"] == clients


FALLBACK = """
import json, os, socket, sys

unix_path, far_port, near_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
paths, echoes = {}, {}

def exchange(name, client, server):
    client.sendall(name.encode())
    echoes[name] = server.recv(100) == name.encode()
    paths[name] = getattr(client, "path", "?")

a, b = socket.socketpair()
exchange("socketpair", a, b)

listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(unix_path)
listener.listen()
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(unix_path)
exchange("unix", client, listener.accept()[0])

listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
exchange("loopback", client, listener.accept()[0])

for name, address in (("not_behind_tap", ("198.19.0.1", far_port)),
                      ("behind_tap", ("198.18.0.1", near_port))):
    client = socket.create_connection(address, timeout=10)
    paths[name] = client.path
    client.sendall(name.encode())
    client.shutdown(socket.SHUT_WR)
    echoes[name] = client.recv(100) == name.encode()
print(json.dumps({"paths": paths, "echoes": echoes}))
"""


@pytest.mark.privileged
def test_unix_loopback_and_other_destinations_go_through_the_os(tmp_path: Path) -> None:
    app = _script(tmp_path, "fallback.py", FALLBACK)
    with Netns() as ns:
        ns.add_address("lo", "198.19.0.1/32")  # the kernel's own: not behind the TAP
        servers = []
        for _ in range(2):
            sock = kernel_socket(ns)
            sock.bind(("0.0.0.0", 0))
            sock.listen(4)
            sock.settimeout(30)
            servers.append(sock)

        def echo(sock: socket.socket) -> None:
            with sock, sock.accept()[0] as conn:
                conn.settimeout(30)
                conn.sendall(conn.recv(100))

        threads = [threading.Thread(target=echo, args=(s,), daemon=True) for s in servers]
        for thread in threads:
            thread.start()
        ports = [str(s.getsockname()[1]) for s in servers]
        unix_path = str(tmp_path / "app.sock")
        with running(ns, "--stats", "--", "python", app, unix_path, *ports) as run:
            status, out, err = run.finish()
        for thread in threads:
            thread.join(10)
    assert status == 0, err
    report = json.loads(out)
    assert report["echoes"] == dict.fromkeys(report["echoes"], True) and len(report["echoes"]) == 5
    assert report["paths"] == {
        "socketpair": "os",
        "unix": "os",
        "loopback": "os",
        "not_behind_tap": "os",
        "behind_tap": "user_level",
    }
    selections = stats_of(err)["selections"]
    assert selections["os/loopback"] >= 2  # the loopback client and its listener
    assert selections["os/no_route"] == 1
    assert selections["os/af_unix"] >= 2
    assert selections["user_level/connect"] == 1


def test_the_programs_own_error_and_exit_status_are_pythons() -> None:
    """A SoftNic needs no privileges: the program's traceback is its own, its status is run's."""
    code = "import socket; print(type(socket.socket()).__name__); raise ValueError('boom')"
    result = CliRunner().invoke(
        main,
        ["run", "--device", "softnic", "--address", "198.18.0.2/24", "--", "python", "-c", code],
    )
    assert result.exit_code == 1
    assert result.stdout == "Socket\n"
    lines = result.stderr.splitlines()
    assert lines[:3] == [
        "Traceback (most recent call last):",
        '  File "<string>", line 1, in <module>',
        "ValueError: boom",
    ]
    assert lines[-1].startswith("netoffload run: user-level 0 sockets")
    exited = CliRunner().invoke(
        main,
        ["run", "--device", "softnic", "--address", "198.18.0.2/24", "--", "python", "-c",
         "raise SystemExit(3)"],
    )  # fmt: skip
    assert exited.exit_code == 3


@pytest.mark.privileged
def test_http_server_on_an_xdp_device_sends_100_mb_formed_in_umem(big_file: Path) -> None:
    """The same server on one end of a veth through AF_XDP: every frame it sends is formed in
    the UMEM and posted where it lies; the device copies no payload."""
    if os.geteuid() == 0 and (missing := af_xdp_missing()) is not None:
        pytest.skip(missing)
    xdp = ("run", "--device", "xdp:nsova", "--address", f"{OURS}/24")
    with Netns() as ns:
        ns.add_veth("nsova", "nsovb")
        ns.set_link("nsova", up=True)
        ns.set_link("nsovb", up=True)
        # The kernel's segments must carry whole checksums: a partial one never crosses XDP.
        ns.set_features("nsovb", {"tx-checksum-ip-generic": False})
        ns.add_address("nsovb", f"{KERNEL}/24")
        args = ("--stats", "--", "python", "-m", "http.server")
        with running(ns, *args, cwd=str(big_file.parent), device=xdp) as run:
            connect_when_listening(ns, OURS, 8000).close()
            with ns.entered(), urllib.request.urlopen(f"http://{OURS}:8000/big.bin") as response:
                body = response.read()
            assert len(body) == SIZE and body == big_file.read_bytes()
            del body
            status, _out, err = run.finish(interrupt=True)
    assert status == 0, err
    stats = stats_of(err)
    assert_all_user_level(stats, SIZE)
    device = stats["stack"]["interfaces"][0]["device"]
    # Every TCP segment the stack sent was formed in a UMEM chunk and posted there; what the
    # device copied is what came whole (ARP and the like), no payload.
    assert device["tx_in_place"] >= stats["stack"]["tcp"]["segments_out"] > SIZE // 1448
    assert device["tx_copy_bytes"] <= 60 * device["tx_copies"]


def test_settings_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('device = "softnic"\naddresses = ["198.18.0.2/24"]\npolicy = "never"\n')
    code = "import socket; s = socket.socket(); s.bind(('198.18.0.2', 0)); print(s.path)"
    result = CliRunner().invoke(
        main, ["run", "--config", str(config), "--stats", "--", "python", "-c", code]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "user_level\n"
    stats = json.loads(result.stderr.splitlines()[-1])
    assert stats["selections"] == {"user_level/bind": 1}
    assert stats["stack"]["policy"]["mode"] == "never"
