"""A local cluster of real member processes, for ``kvctl cluster up`` and for tests.

:class:`ProcessCluster` starts ``size`` members, each a ``python -m cli server``
process with its own data directory ``DATA/<name>`` and log file
``DATA/<name>.log``, on ``host`` with ports counted from ``base_port``: member
``i`` (from 0) serves clients on ``base_port + 10*i``, peers on
``base_port + 10*i + 1`` and HTTP ``/metrics`` and ``/health`` on
``base_port + 10*i + 2`` (unless ``metrics=False``), so the first endpoint is
``base_port`` itself::

    with ProcessCluster("/tmp/kv", size=3, base_port=None, tick_ms=20) as cluster:
        print(cluster.endpoints, cluster.leader())
        leader = cluster.leader()
        cluster.kill(leader)                     # SIGKILL
        cluster.restart(leader)                  # recovers from its data directory

``base_port=None`` takes the data directory's recorded base port, or else free
ports (:func:`free_base_port`): what tests want.

The cluster's identity (its token, size, host and ports) is kept in
``DATA/cluster.json`` with each member's pid and command line, so the same data
directory starts the same cluster again (with its data) and a tool can find
the processes.  Starting it with another size, host or base port is refused.

The API is blocking and touches only the processes it started (by pid).  From
trio code use the ``*_async`` helpers, which run the blocking calls in a
thread.  Status polling uses plain blocking sockets, so it works inside or
outside a trio run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgspec
import trio

import kvstore
from kvstore import api
from kvstore.api import ClientFrame, StatusRequest, StatusResponse
from kvstore.config import member_id, parse_address
from raft.framing import HEADER_SIZE, encode_frame

__all__ = [
    "STATE_FILE",
    "ClusterError",
    "MemberInfo",
    "ProcessCluster",
    "free_base_port",
    "query_status",
    "read_state",
]

STATE_FILE = "cluster.json"
"""The file in the data directory that records the cluster's identity and processes."""
_STATE_FORMAT = 1
_POLL_INTERVAL = 0.05


class ClusterError(Exception):
    """The cluster could not be started or reached as asked; the message says why."""


@dataclass(frozen=True)
class MemberInfo:
    """One member as the cluster knows it.  ``pid`` is ``None`` when not running."""

    name: str
    pid: int | None
    client_address: str
    peer_address: str
    member_id: int
    data_dir: Path
    log_path: Path
    metrics_address: str | None = None
    """Where the member serves ``/metrics`` and ``/health`` (``None``: it does not)."""


# -- Status over a plain socket --------------------------------------------------------


def query_status(endpoint: str, timeout: float = 1.0) -> StatusResponse | None:
    """The status of the member at ``endpoint`` (``host:port``), or ``None`` if it
    does not answer within ``timeout`` seconds.  Blocking; needs no trio run."""
    host, port = parse_address(endpoint)
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(encode_frame(api.encode(ClientFrame(1, StatusRequest()))))
            header = _receive_exactly(sock, HEADER_SIZE, deadline)
            length = int.from_bytes(header, "big")
            if length > api.MAX_FRAME_BYTES:
                return None
            frame = api.decode_server_frame(_receive_exactly(sock, length, deadline))
    except (OSError, msgspec.DecodeError, EOFError):
        return None
    return frame.response if isinstance(frame.response, StatusResponse) else None


def _receive_exactly(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("status query timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return bytes(data)


def free_base_port(
    size: int, host: str = "127.0.0.1", *, low: int = 20_000, high: int = 60_000, tries: int = 200
) -> int:
    """A base port whose ``3 * size`` member ports are all free on ``host`` now.

    Another process may take one before the cluster binds it; good enough for tests.
    """
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(low, high - 10 * size) // 10 * 10
        if all(_port_free(host, p) for p in _member_ports(base, size)):
            return base
    raise ClusterError(f"found no {3 * size} free ports on {host} in {tries} tries")


def _member_ports(base: int, size: int) -> list[int]:
    """Client, peer and metrics port of every member."""
    return [base + 10 * i + offset for i in range(size) for offset in (0, 1, 2)]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# -- Member processes ------------------------------------------------------------------


class _Member:
    """A member's fixed identity plus its current process, if any."""

    def __init__(
        self,
        name: str,
        client: str,
        peer: str,
        data_dir: Path,
        token: str,
        metrics: str | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.peer = peer
        self.metrics = metrics
        self.data_dir = data_dir
        self.log_path = data_dir.with_name(f"{name}.log")
        self.id = member_id(token, name)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None
        self.returncode: int | None = None
        self.expected_exit = False
        """True when this cluster ended the process (kill/stop), so its exit is no surprise."""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def reap(self) -> int | None:
        """The exit code if the process has ended (closing its log), else ``None``."""
        if self.process is None:
            return self.returncode
        code = self.process.poll()
        if code is not None:
            self.returncode = code
            self.process = None
            self.close_log()
        return code

    def close_log(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def last_log_line(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 4096))
                lines = log.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return next((line.strip() for line in reversed(lines) if line.strip()), "")

    def info(self) -> MemberInfo:
        return MemberInfo(
            name=self.name,
            pid=self.pid,
            client_address=self.client,
            peer_address=self.peer,
            member_id=self.id,
            data_dir=self.data_dir,
            log_path=self.log_path,
            metrics_address=self.metrics,
        )


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent (thread) dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ProcessCluster:
    """``size`` real member processes on ``host``, data and logs under ``data_dir``.

    ``tick_ms`` / ``election_ticks`` / ``snapshot_count`` are passed to each
    member when given (short ticks make tests fast).  ``extra_args`` are added
    to every member's command line, ``env`` to its environment.  With
    ``die_with_parent`` (Linux; honoured only when starting members from the
    main thread) the members get SIGTERM if this process dies without stopping
    them.  With ``metrics`` (the default) every member serves ``/metrics`` and
    ``/health`` on its third port.
    """

    def __init__(
        self,
        data_dir: str | Path,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        base_port: int | None = 2379,
        tick_ms: int | None = None,
        election_ticks: int | None = None,
        snapshot_count: int | None = None,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = False,
        python: str = sys.executable,
        metrics: bool = True,
    ) -> None:
        if size < 1:
            raise ClusterError("a cluster needs at least one member")
        self.data_dir = Path(data_dir).resolve()
        self.size = size
        self.host = host
        if base_port is None:
            base_port = self._stored_base_port() or free_base_port(size, host)
        if not 0 < base_port <= 65535 - 10 * (size - 1) - 1:
            raise ClusterError(f"base port {base_port} leaves no room for {size} members")
        self.base_port = base_port
        self._tick_ms = tick_ms
        self._election_ticks = election_ticks
        self._snapshot_count = snapshot_count
        self._log_level = log_level
        self._extra_args = list(extra_args)
        self._env = dict(env or {})
        self._die_with_parent = die_with_parent
        self._python = python
        self._lock = threading.RLock()
        self.token = self._load_or_create_token()
        self._members = {
            f"n{i + 1}": _Member(
                f"n{i + 1}",
                f"{host}:{base_port + 10 * i}",
                f"{host}:{base_port + 10 * i + 1}",
                self.data_dir / f"n{i + 1}",
                self.token,
                f"{host}:{base_port + 10 * i + 2}" if metrics else None,
            )
            for i in range(size)
        }

    # -- Identity and state file -----------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _stored_base_port(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            port = json.loads(self.state_path.read_text()).get("base_port")
            return port if isinstance(port, int) else None
        return None

    def _load_or_create_token(self) -> str:
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return f"kvstore-{secrets.token_hex(6)}"
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {self.state_path}: {exc}") from None
        stored = (state.get("size"), state.get("host"), state.get("base_port"))
        if stored != (self.size, self.host, self.base_port):
            size, host, port = stored
            raise ClusterError(
                f"{self.data_dir} holds a {size}-member cluster on {host} from port {port}; "
                f"start it with --size {size} --host {host} --base-port {port}, "
                "or use another data directory"
            )
        token = state.get("token")
        if not isinstance(token, str) or not token:
            raise ClusterError(f"{self.state_path} has no cluster token")
        return token

    def _write_state(self) -> None:
        state = {
            "format": _STATE_FORMAT,
            "token": self.token,
            "size": self.size,
            "host": self.host,
            "base_port": self.base_port,
            "members": [
                {
                    "name": m.name,
                    "client": m.client,
                    "peer": m.peer,
                    "metrics": m.metrics,
                    "id": f"{m.id:x}",
                    "pid": m.pid,
                    "log": str(m.log_path),
                    "command": self.command(m.name),
                }
                for m in self._members.values()
            ],
        }
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.state_path)

    # -- Views -----------------------------------------------------------------------------

    @property
    def metrics_addresses(self) -> list[str]:
        """Every member's ``/metrics`` and ``/health`` address, ``host:port``, in member
        order (empty when the cluster was made with ``metrics=False``)."""
        return [m.metrics for m in self._members.values() if m.metrics is not None]

    @property
    def names(self) -> list[str]:
        return list(self._members)

    @property
    def endpoints(self) -> list[str]:
        """Every member's client address, ``host:port``, in member order."""
        return [m.client for m in self._members.values()]

    @property
    def members(self) -> list[MemberInfo]:
        with self._lock:
            return [m.info() for m in self._members.values()]

    def member(self, name: str) -> MemberInfo:
        return self._member(name).info()

    def _member(self, name: str) -> _Member:
        try:
            return self._members[name]
        except KeyError:
            raise ClusterError(f"no member named {name!r} (members: {self.names})") from None

    def name_of(self, member_id: int) -> str | None:
        """The name of the member with this raft id, if it is one of ours."""
        return next((m.name for m in self._members.values() if m.id == member_id), None)

    def command(self, name: str) -> list[str]:
        """The command line that runs member ``name``."""
        m = self._member(name)
        initial = ",".join(f"{o.name}={o.peer}" for o in self._members.values())
        argv = [
            self._python,
            "-m",
            "cli",
            "server",
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client",
            m.client,
            "--listen-peer",
            m.peer,
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            self.token,
            "--log-level",
            self._log_level,
        ]
        if m.metrics is not None:
            argv += ["--listen-metrics", m.metrics]
        for flag, value in (
            ("--tick-ms", self._tick_ms),
            ("--election-ticks", self._election_ticks),
            ("--snapshot-count", self._snapshot_count),
        ):
            if value is not None:
                argv += [flag, str(value)]
        return argv + self._extra_args

    # -- Life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> str:
        """Start every member and wait until all of them know one leader.

        Returns the leader's name.  On failure (a member exits, no leader in
        ``timeout`` seconds) the members are stopped and :class:`ClusterError` raised.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                for m in self._members.values():
                    if not m.running:
                        self._spawn(m)
                self._write_state()
            return self.wait_for_leader(timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, m: _Member) -> None:
        m.close_log()
        m.log_file = m.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        m.log_file.write(f"--- {stamp} starting member {m.name} ---\n".encode())
        m.log_file.flush()
        env = {**os.environ, **self._env, "PYTHONUNBUFFERED": "1"}
        root = str(Path(kvstore.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        on_main_thread = threading.current_thread() is threading.main_thread()
        preexec: Callable[[], None] | None = None
        if self._die_with_parent and on_main_thread and sys.platform == "linux":
            preexec = _die_with_parent
        m.process = subprocess.Popen(
            self.command(m.name),
            stdin=subprocess.DEVNULL,
            stdout=m.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches only whoever runs the cluster
            preexec_fn=preexec,  # only on the main thread: see the class docstring
        )
        m.returncode = None
        m.expected_exit = False

    def wait_for_leader(self, timeout: float = 10.0) -> str:
        """Wait until every running member names the same running leader; return its name."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            leader = self._agreed_leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise ClusterError(self._no_leader_message(timeout))
            time.sleep(_POLL_INTERVAL)

    def _check_alive(self, only: _Member | None = None) -> None:
        """Raise :class:`ClusterError` if a member (or ``only``) died unexpectedly."""
        for m in self._members.values() if only is None else [only]:
            if m.process is not None and not m.expected_exit:
                code = m.reap()
                if code is not None:
                    raise ClusterError(
                        f"member {m.name} exited with code {code}: "
                        f"{m.last_log_line() or 'no output'} (log: {m.log_path})"
                    )

    def _agreed_leader(self) -> str | None:
        running = [m for m in self._members.values() if m.running]
        statuses = [query_status(m.client, 0.5) for m in running]
        leaders = {s.leader if s is not None else 0 for s in statuses}
        if not running or len(leaders) != 1:
            return None
        leader = self.name_of(leaders.pop())
        # Followers go on naming a killed leader until their election timeout.
        return leader if leader is not None and self._members[leader].running else None

    def _no_leader_message(self, timeout: float) -> str:
        views = []
        for m in self._members.values():
            if not m.running:
                views.append(f"{m.name}: not running")
                continue
            status = query_status(m.client, 0.5)
            if status is None:
                views.append(f"{m.name}: no answer")
            else:
                views.append(f"{m.name}: leader {self.name_of(status.leader) or 'none'}")
        return f"no leader agreed on within {timeout:g}s ({'; '.join(views)})"

    def status(self, name: str, timeout: float = 1.0) -> StatusResponse | None:
        """Member ``name``'s status, or ``None`` if it does not answer."""
        return query_status(self._member(name).client, timeout)

    def leader(self, timeout: float = 1.0) -> str | None:
        """The name of the member that says it leads (the highest term wins), if any."""
        best: tuple[int, str] | None = None
        for m in self._members.values():
            if not m.running:
                continue
            status = query_status(m.client, timeout)
            if status is None or status.leader != status.header.member_id:
                continue
            if best is None or status.raft_term > best[0]:
                best = (status.raft_term, m.name)
        return best[1] if best is not None else None

    def exited(self) -> dict[str, int]:
        """Members whose process ended without this cluster ending it: name -> exit code.

        Each is reported once; call it to watch for crashes.
        """
        with self._lock:
            ended = {}
            for m in self._members.values():
                if m.process is not None and not m.expected_exit:
                    code = m.reap()
                    if code is not None:
                        ended[m.name] = code
            return ended

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send ``sig`` to member ``name``'s process.  For SIGKILL, SIGTERM and
        SIGINT wait (up to ``timeout``) for it to exit and return its exit code."""
        with self._lock:
            m = self._member(name)
            if m.process is None or not m.running:
                raise ClusterError(f"member {name} is not running")
            process = m.process
            terminal = sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
            m.expected_exit = terminal
            process.send_signal(sig)
        if not terminal:
            return None
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"member {name} did not exit within {timeout:g}s") from None
        with self._lock:
            code = m.reap()
            self._write_state()
        return code

    def restart(self, name: str, timeout: float = 10.0) -> None:
        """Start member ``name`` again (it must not be running) and wait until it
        answers status requests.  It rejoins with its data directory."""
        with self._lock:
            m = self._member(name)
            if m.running:
                raise ClusterError(f"member {name} is still running")
            m.reap()
            self._spawn(m)
            self._write_state()
        deadline = time.monotonic() + timeout
        while query_status(m.client, 0.5) is None:
            self._check_alive(m)
            if time.monotonic() >= deadline:
                raise ClusterError(f"member {name} did not come back within {timeout:g}s")
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """SIGTERM every running member, wait up to ``timeout`` seconds, SIGKILL
        the stragglers.  Returns name -> exit code of the members it stopped
        (0 = clean).  Idempotent."""
        with self._lock:
            running = [m for m in self._members.values() if m.running]
            for m in running:
                m.expected_exit = True
                assert m.process is not None
                with contextlib.suppress(ProcessLookupError):
                    m.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            codes: dict[str, int] = {}
            for m in running:
                assert m.process is not None
                process = m.process
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                codes[m.name] = process.returncode
                m.reap()
            for m in self._members.values():
                m.reap()
                m.close_log()
            if self.state_path.parent.exists():
                self._write_state()
            return codes

    def __enter__(self) -> ProcessCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- From trio code ----------------------------------------------------------------------

    async def start_async(self, timeout: float = 20.0) -> str:
        leader: str = await trio.to_thread.run_sync(self.start, timeout)
        return leader

    async def stop_async(self, timeout: float = 10.0) -> dict[str, int]:
        codes: dict[str, int] = await trio.to_thread.run_sync(self.stop, timeout)
        return codes

    async def kill_async(
        self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0
    ) -> int | None:
        code: int | None = await trio.to_thread.run_sync(self.kill, name, sig, timeout)
        return code

    async def restart_async(self, name: str, timeout: float = 10.0) -> None:
        await trio.to_thread.run_sync(self.restart, name, timeout)

    async def wait_for_leader_async(self, timeout: float = 10.0) -> str:
        leader: str = await trio.to_thread.run_sync(self.wait_for_leader, timeout)
        return leader

    async def leader_async(self) -> str | None:
        leader: str | None = await trio.to_thread.run_sync(self.leader)
        return leader


def read_state(data_dir: str | Path) -> dict[str, Any]:
    """The contents of ``DATA/cluster.json`` (for tools that find the processes)."""
    state: dict[str, Any] = json.loads((Path(data_dir) / STATE_FILE).read_text())
    return state
