"""kvctl: output formats, the txn text format, error lines and every command.

The command tests run kvctl with click's ``CliRunner`` against a real
3-member cluster of in-memory members on loopback ports, running in a
background thread with short ticks (the CLI runs its own trio loop in the main
thread).  Nothing here starts a process; ``test_kvctl_e2e.py`` does.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from cli import output
from cli.bench import BenchResult, BenchSpec
from cli.errors import describe
from cli.main import cli
from cli.txn_parser import PROMPTS, TxnParseError, parse_compare, parse_op, read_txn
from kvstore import api
from kvstore.api import CompareResult, CompareTarget, KeyValue, ResponseHeader, SortOrder
from kvstore.client import CompactedError, OutcomeUnknown, Unavailable
from kvstore.config import ConfigError, MemberConfig
from kvstore.local_cluster import free_base_port, query_status
from kvstore.server import Member

HEADER = ResponseHeader(cluster_id=7, member_id=11, revision=5, raft_term=2)
KV = KeyValue(key=b"foo", create_revision=2, mod_revision=4, version=3, value=b"bar")


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def assert_one_error_line(result: Result, code: int = 1) -> str:
    """The command failed with ``code`` and said so in one ``Error:`` line, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


# -- The txn text format ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "target", "result", "value"),
    [
        ('value("k") = "v"', CompareTarget.VALUE, CompareResult.EQUAL, b"v"),
        ('val("k") != "a b"', CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"a b"),
        ('mod("k") > "3"', CompareTarget.MOD, CompareResult.GREATER, 3),
        ('m("k") < 3', CompareTarget.MOD, CompareResult.LESS, 3),
        ('version("k") = "0"', CompareTarget.VERSION, CompareResult.EQUAL, 0),
        ('ver("k") == 2', CompareTarget.VERSION, CompareResult.EQUAL, 2),
        ('create("k") = "2"', CompareTarget.CREATE, CompareResult.EQUAL, 2),
        ('c("k") > 0', CompareTarget.CREATE, CompareResult.GREATER, 0),
        ('lease("k") = "0"', CompareTarget.LEASE, CompareResult.EQUAL, 0),
        ('lease("k") = "1f"', CompareTarget.LEASE, CompareResult.EQUAL, 0x1F),
        (
            'Value( "k" )  =  "x\\ty\\x00\\"q"',
            CompareTarget.VALUE,
            CompareResult.EQUAL,
            b'x\ty\0"q',
        ),
        ("value(`k`) = `raw\\n`", CompareTarget.VALUE, CompareResult.EQUAL, b"raw\\n"),
    ],
)
def test_parse_compare(
    line: str, target: CompareTarget, result: CompareResult, value: object
) -> None:
    compare = parse_compare(line)
    assert (compare.key, compare.target, compare.result, compare.value) == (
        b"k",
        target,
        result,
        value,
    )


def test_parse_compare_over_a_range() -> None:
    compare = parse_compare('mod("a", "c") > "1"')
    assert (compare.key, compare.range_end, compare.value) == (b"a", b"c", 1)


@pytest.mark.parametrize(
    "line",
    [
        'size("k") = "1"',
        'value(k) = "v"',
        'value("k" = "v"',
        'value("k") ~ "v"',
        'value("k") =',
        'mod("k") > "three"',
        'value("k") = "v" extra',
        'value("k) = "v"',
        'value("k\\q") = "v"',
    ],
)
def test_malformed_compares_are_refused(line: str) -> None:
    with pytest.raises(TxnParseError, match="malformed compare"):
        parse_compare(line)


def test_parse_ops() -> None:
    put = parse_op('put k "a value" --prev-kv')
    assert isinstance(put, api.PutRequest)
    assert (put.key, put.value, put.prev_kv) == (b"k", b"a value", True)
    get = parse_op("get k --prefix --limit 2 --order DESCEND")
    assert isinstance(get, api.RangeRequest)
    assert (get.key, get.range_end, get.limit, get.sort_order) == (
        b"k",
        b"l",
        2,
        SortOrder.DESCEND,
    )
    ranged = parse_op("get a c")
    assert isinstance(ranged, api.RangeRequest) and ranged.range_end == b"c"
    delete = parse_op("del k --from-key")
    assert isinstance(delete, api.DeleteRangeRequest)
    assert (delete.key, delete.range_end) == (b"k", b"\0")


@pytest.mark.parametrize(
    "line", ["frob k", "put k", "get", "get k --bogus", 'put "unterminated v', "get k --help"]
)
def test_malformed_ops_are_refused(line: str) -> None:
    with pytest.raises(TxnParseError, match="malformed request"):
        parse_op(line)


def test_read_txn_sections_and_prompts() -> None:
    text = 'mod("a") > "0"\nvalue("b") = "x"\n\nput a 1\nget b\n\ndel a\n'
    prompts: list[str] = []
    parsed = read_txn(iter(text.splitlines(keepends=True)), prompts.append)
    assert prompts == list(PROMPTS)
    assert [c.key for c in parsed.compare] == [b"a", b"b"]
    assert [type(op) for op in parsed.success] == [api.PutRequest, api.RangeRequest]
    assert [type(op) for op in parsed.failure] == [api.DeleteRangeRequest]


def test_read_txn_at_end_of_input() -> None:
    parsed = read_txn(iter(["\n", "put a 1\n"]))
    assert parsed.compare == [] and len(parsed.success) == 1 and parsed.failure == []


# -- Output -------------------------------------------------------------------------------


def test_json_of_a_range_is_etcdctl_shaped() -> None:
    response = api.RangeResponse(header=HEADER, kvs=[KV], count=1)
    assert output.response_json(response) == {
        "header": {"cluster_id": 7, "member_id": 11, "revision": 5, "raft_term": 2},
        "kvs": [
            {
                "key": base64.b64encode(b"foo").decode(),
                "create_revision": 2,
                "mod_revision": 4,
                "version": 3,
                "value": base64.b64encode(b"bar").decode(),
            }
        ],
        "count": 1,
    }


def test_json_leaves_out_zero_fields() -> None:
    assert output.response_json(api.PutResponse(header=ResponseHeader(revision=3))) == {
        "header": {"revision": 3}
    }
    empty = api.RangeResponse(header=HEADER, more=True)
    assert set(output.response_json(empty)) == {"header", "more"}
    deleted = api.DeleteRangeResponse(header=HEADER, deleted=1, prev_kvs=[KV])
    assert output.response_json(deleted)["prev_kvs"][0]["value"] == "YmFy"


def test_json_of_a_txn_names_each_response() -> None:
    txn = api.TxnResponse(
        header=HEADER,
        succeeded=True,
        responses=[
            api.PutResponse(header=ResponseHeader(revision=5)),
            api.RangeResponse(header=ResponseHeader(revision=5), kvs=[KV], count=1),
            api.DeleteRangeResponse(header=ResponseHeader(revision=5), deleted=2),
        ],
    )
    data = output.response_json(txn)
    assert data["succeeded"] is True
    assert [next(iter(r)) for r in data["responses"]] == [
        "response_put",
        "response_range",
        "response_delete_range",
    ]
    assert data["responses"][0] == {"response_put": {"header": {"revision": 5}}}


def test_table_alignment() -> None:
    table = output.render_table(["NAME", "N", "OK"], [["a", 10, True], ["bbb", 2, False]])
    assert table.splitlines() == [
        "+------+----+-------+",
        "| NAME | N  |   OK  |",
        "+------+----+-------+",
        "| a    | 10 |  true |",
        "| bbb  |  2 | false |",
        "+------+----+-------+",
    ]


def test_status_row() -> None:
    status = api.StatusResponse(
        header=HEADER,
        name="n1",
        leader=11,
        raft_term=2,
        raft_index=9,
        raft_applied_index=8,
        revision=5,
        compact_revision=0,
        keys=3,
        version="0.1.0",
    )
    assert output.status_row("h:1", status) == ["h:1", "b", "b", "0.1.0", True, 2, 9, 8, 5, 3]


# -- Errors and bench bookkeeping ---------------------------------------------------------


def test_describe_expected_failures() -> None:
    assert describe(Unavailable("nobody home")) == "nobody home"
    assert "may have been applied" in (describe(OutcomeUnknown("no answer")) or "")
    assert describe(CompactedError("compacted")) == "compacted"
    assert describe(ConfigError("bad name")) == "bad name"
    assert describe(ExceptionGroup("g", [KeyError("x"), ConfigError("inner")])) == "inner"
    assert describe(OSError(98, "Address already in use")) is not None
    assert describe(KeyError("a bug")) is None


def test_bench_percentiles_and_keys() -> None:
    result = BenchResult(
        BenchSpec(op="put"), seconds=2.0, latencies=[i / 1000 for i in range(1, 101)]
    )
    assert result.ops_per_second == 50
    assert (result.percentile(50), result.percentile(99), result.percentile(100)) == (
        50.0,
        99.0,
        100.0,
    )
    spec = BenchSpec(op="get", total=50_000, key_size=6)
    assert spec.keys == 1000 and spec.key(1001) == b"000001"
    assert BenchSpec(op="put", total=10).keys == 10


# -- Usage errors and an unreachable cluster ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["get"],
        ["get", "a", "b", "--prefix"],
        ["get", "a", "--prefix", "--from-key"],
        ["-w", "yaml", "get", "a"],
        ["--endpoints", "nohost", "get", "a"],
        ["get", "a", "--limit", "-1"],
        ["compaction", "0"],
        ["bogus"],
        ["get", "a", "--bogus"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    assert_one_error_line(run(*args), code=2)


def unused_port() -> int:
    return free_base_port(1)


def test_unreachable_cluster_is_one_line() -> None:
    result = run(
        "--endpoints", f"127.0.0.1:{unused_port()}", "--command-timeout", "0.3", "put", "a", "b"
    )
    line = assert_one_error_line(result)
    assert "0.3s" in line


def test_endpoint_status_of_a_dead_endpoint_fails() -> None:
    result = run(
        "--endpoints",
        f"127.0.0.1:{unused_port()}",
        "--command-timeout",
        "0.3",
        "endpoint",
        "status",
    )
    assert result.exit_code == 1
    assert "Failed to get the status" in result.stderr
    assert "Traceback" not in result.output


def test_server_bad_flags_are_one_line(tmp_path: Path) -> None:
    line = assert_one_error_line(
        run("server", "--data-dir", str(tmp_path), "--initial-cluster", "n1=nowhere")
    )
    assert "no port" in line
    line = assert_one_error_line(
        run(
            "server",
            "--name",
            "x",
            "--data-dir",
            str(tmp_path),
            "--initial-cluster",
            "y=127.0.0.1:1",
        )
    )
    assert "not in the initial cluster" in line


def test_server_reports_an_address_in_use(tmp_path: Path) -> None:
    base = free_base_port(1)
    with listening(base):
        line = assert_one_error_line(
            run(
                "server",
                "--data-dir",
                str(tmp_path / "d"),
                "--listen-client",
                f"127.0.0.1:{base}",
                "--listen-peer",
                f"127.0.0.1:{base + 1}",
            )
        )
    assert f"client address 127.0.0.1:{base}" in line


def test_server_stops_with_one_line_on_a_raft_safety_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member whose log lost acknowledged entries stops (as etcd panics), with
    one line saying what happened and what to do, not a traceback."""
    from cli import server_command
    from raft.errors import SafetyViolation

    async def broken_member(config: MemberConfig) -> None:
        raise ExceptionGroup("member", [SafetyViolation("commit 12 beyond last index 11")])

    monkeypatch.setattr(server_command, "serve", broken_member)
    line = assert_one_error_line(
        CliRunner().invoke(cli, ["server", "--name", "n1", "--data-dir", str(tmp_path / "d")])
    )
    assert "commit 12 beyond last index 11" in line and "member remove" in line


@contextmanager
def listening(port: int) -> Iterator[None]:
    """A plain socket listening on ``port`` for the duration of a ``with``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def test_server_reports_a_corrupt_wal(tmp_path: Path) -> None:
    base = free_base_port(1)
    config = MemberConfig(
        name="solo",
        data_dir=tmp_path,
        listen_client=("127.0.0.1", base),
        listen_peer=("127.0.0.1", base + 1),
        tick_interval=0.01,
    )

    async def write_something() -> None:
        async with trio.open_nursery() as nursery:
            member: Member = await nursery.start(Member(config).run)
            with trio.fail_after(5):
                while member.node is None or member.node.leader != member.id:
                    await trio.sleep(0.01)
            await member.handle(api.PutRequest(key=b"k", value=b"v"))
            nursery.cancel_scope.cancel()

    trio.run(write_something)
    segment = sorted((tmp_path / "raft" / "wal").glob("*.wal"))[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    line = assert_one_error_line(
        run(
            "server",
            "--name",
            "solo",
            "--data-dir",
            str(tmp_path),
            "--listen-client",
            f"127.0.0.1:{base}",
            "--listen-peer",
            f"127.0.0.1:{base + 1}",
        )
    )
    assert "corrupt WAL segment" in line and "offset" in line


def test_cluster_up_refuses_another_shape_on_the_same_data_dir(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(
        json.dumps({"size": 3, "host": "127.0.0.1", "base_port": 2379, "token": "t"})
    )
    line = assert_one_error_line(
        run("cluster", "up", "--data-dir", str(tmp_path), "--size", "1", "--base-port", "3000")
    )
    assert "--size 3" in line and "--base-port 2379" in line


# -- Against a real in-process cluster ------------------------------------------------------


class ThreadCluster:
    """``size`` in-memory members on loopback, run by trio in a background thread."""

    def __init__(self, size: int = 3) -> None:
        base = free_base_port(size)
        self.clients = [("127.0.0.1", base + 10 * i) for i in range(size)]
        peers = {f"m{i}": ("127.0.0.1", base + 10 * i + 1) for i in range(size)}
        self.configs = [
            MemberConfig(
                name=name,
                data_dir=None,
                listen_client=self.clients[i],
                listen_peer=peers[name],
                initial_cluster=peers,
                tick_interval=0.01,
                election_ticks=20,
            )
            for i, name in enumerate(peers)
        ]
        self.endpoints = ",".join(f"{h}:{p}" for h, p in self.clients)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            for config in self.configs:
                await nursery.start(Member(config).run)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10) and self._error is None, self._error
        for _ in range(500):
            statuses = [query_status(f"{h}:{p}", 0.5) for h, p in self.clients]
            leaders = {s.leader if s else 0 for s in statuses}
            if len(leaders) == 1 and 0 not in leaders:
                return
            threading.Event().wait(0.01)
        raise AssertionError("no leader")

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThreadCluster]:
    tc = ThreadCluster()
    tc.start()
    yield tc
    tc.stop()


@pytest.fixture
def kv(cluster: ThreadCluster, request: pytest.FixtureRequest) -> Iterator[KvCtl]:
    """kvctl bound to the cluster, with keys under a prefix of the test's own."""
    ctl = KvCtl(cluster.endpoints, request.node.name.split("[")[0] + "/")
    yield ctl
    ctl("del", ctl.prefix, "--prefix")


class KvCtl:
    def __init__(self, endpoints: str, prefix: str) -> None:
        self.endpoints = endpoints
        self.prefix = prefix

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return run("--endpoints", self.endpoints, *args, input=input)

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.exit_code, result.output)
        return result.stdout

    def k(self, name: str) -> str:
        return self.prefix + name


def test_put_get_del_simple(kv: KvCtl) -> None:
    a, b = kv.k("a"), kv.k("b")
    assert kv.ok("put", a, "1") == "OK\n"
    assert kv.ok("put", b, "2") == "OK\n"
    assert kv.ok("get", a) == f"{a}\n1\n"
    assert kv.ok("get", kv.prefix, "--prefix") == f"{a}\n1\n{b}\n2\n"
    assert kv.ok("get", kv.prefix, "--prefix", "--keys-only") == f"{a}\n\n{b}\n\n"
    assert kv.ok("get", kv.prefix, "--prefix", "--print-value-only") == "1\n2\n"
    assert kv.ok("get", kv.prefix, "--prefix", "--count-only") == "2\n"
    assert kv.ok("get", kv.prefix, "--prefix", "--limit", "1") == f"{a}\n1\n"
    assert kv.ok("get", a, b) == f"{a}\n1\n"
    assert kv.ok("get", a, "--from-key", "--consistency", "s").startswith(f"{a}\n1\n{b}\n2\n")
    assert kv.ok("get", kv.prefix, "--prefix", "--order", "DESCEND") == f"{b}\n2\n{a}\n1\n"
    assert kv.ok("get", kv.prefix, "--prefix", "--sort-by", "VALUE", "--order", "descend") == (
        f"{b}\n2\n{a}\n1\n"
    )
    assert kv.ok("put", a, "3", "--prev-kv") == f"OK\n{a}\n1\n"
    assert kv.ok("del", a) == "1\n"
    assert kv.ok("del", a) == "0\n"
    assert kv.ok("del", kv.prefix, "--prefix", "--prev-kv") == f"1\n{b}\n2\n"
    assert kv.ok("get", a) == ""


def test_put_reads_the_value_from_stdin(kv: KvCtl) -> None:
    assert kv.ok("put", kv.k("s"), input="from stdin") == "OK\n"
    assert kv.ok("get", kv.k("s"), "--print-value-only") == "from stdin\n"
    assert kv.ok("put", "--", kv.k("dash"), "-v") == "OK\n"
    assert kv.ok("get", kv.k("dash"), "--print-value-only") == "-v\n"


def test_get_json_and_table(kv: KvCtl) -> None:
    key = kv.k("j")
    kv.ok("put", key, "v")
    data = json.loads(kv.ok("-w", "json", "get", key))
    assert set(data) == {"header", "kvs", "count"}
    assert set(data["header"]) == {"cluster_id", "member_id", "revision", "raft_term"}
    (item,) = data["kvs"]
    assert base64.b64decode(item["key"]) == key.encode()
    assert base64.b64decode(item["value"]) == b"v"
    assert item["version"] == 1 and item["create_revision"] == item["mod_revision"]
    assert "lease" not in item
    missing = json.loads(kv.ok("get", kv.k("none"), "-w", "json"))
    assert set(missing) == {"header"}
    put = json.loads(kv.ok("put", key, "w", "--prev-kv", "-w", "json"))
    assert base64.b64decode(put["prev_kv"]["value"]) == b"v"
    table = kv.ok("get", key, "-w", "table").splitlines()
    assert table[1].split("|")[1].strip() == "KEY"
    assert table[3].split("|")[1:3] == [f" {key} ", " w     "]
    rev = data["header"]["revision"]
    assert kv.ok("get", key, "--rev", str(rev), "--print-value-only") == "v\n"


def test_txn_success_and_failure(kv: KvCtl) -> None:
    k = kv.k("t")
    kv.ok("put", k, "1")
    text = f'value("{k}") = "1"\n\nput {k} 2\nget {k}\n\nget {k}\n\n'
    assert kv.ok("txn", input=text) == f"SUCCESS\n\nOK\n\n{k}\n2\n"
    assert kv.ok("txn", input=text) == f"FAILURE\n\n{k}\n2\n"
    text = f'mod("{k}") > "0"\nversion("{k}") = "2"\n\ndel {k} --prev-kv\n\n\n'
    data = json.loads(kv.ok("-w", "json", "txn", input=text))
    assert data["succeeded"] is True
    assert data["responses"][0]["response_delete_range"]["deleted"] == 1


def test_txn_interactive_prompts(kv: KvCtl) -> None:
    k = kv.k("i")
    out = kv.ok("txn", "-i", input=f'create("{k}") = "0"\n\nput {k} x\n\n\n')
    assert out.splitlines() == [*PROMPTS, "SUCCESS", "", "OK"]


def test_txn_errors_are_one_line(kv: KvCtl) -> None:
    line = assert_one_error_line(kv("txn", input='nonsense("k")\n\n\n'))
    assert "malformed compare" in line
    k = kv.k("dup")
    line = assert_one_error_line(kv("txn", input=f"\nput {k} 1\nput {k} 2\n\n"))
    assert "duplicate" in line.lower()


def test_compaction(kv: KvCtl) -> None:
    k = kv.k("c")
    kv.ok("put", k, "1")
    first = json.loads(kv.ok("-w", "json", "get", k))["header"]["revision"]
    kv.ok("put", k, "2")
    assert kv.ok("compaction", str(first + 1)) == f"compacted revision {first + 1}\n"
    line = assert_one_error_line(kv("get", k, "--rev", str(first)))
    assert "compacted" in line
    line = assert_one_error_line(kv("compaction", "1000000000"))
    assert "revision" in line


def test_endpoint_status_and_health(kv: KvCtl, cluster: ThreadCluster) -> None:
    lines = kv.ok("endpoint", "status").splitlines()
    assert len(lines) == 3
    fields = [line.split(", ") for line in lines]
    assert {f[0] for f in fields} == set(kv.endpoints.split(","))
    assert [f[4] for f in fields].count("true") == 1
    assert len({f[2] for f in fields}) == 1  # one leader id everywhere
    data = json.loads(kv.ok("-w", "json", "endpoint", "status"))
    assert {"Endpoint", "Status"} == set(data[0])
    assert {"raftIndex", "raftTerm", "raftAppliedIndex", "leader", "header"} <= set(
        data[0]["Status"]
    )
    table = kv.ok("-w", "table", "endpoint", "status")
    assert "RAFT APPLIED INDEX" in table and "IS LEADER" in table
    health = kv.ok("endpoint", "health").splitlines()
    assert len(health) == 3 and all(
        "is healthy: successfully committed proposal: took = " in line for line in health
    )
    assert json.loads(kv.ok("-w", "json", "endpoint", "health"))[0]["health"] is True


def test_endpoint_health_with_a_dead_endpoint(cluster: ThreadCluster) -> None:
    dead = f"127.0.0.1:{unused_port()}"
    endpoints = f"{cluster.clients[0][0]}:{cluster.clients[0][1]},{dead}"
    result = run("--endpoints", endpoints, "--command-timeout", "0.5", "endpoint", "health")
    assert result.exit_code == 1
    assert "is healthy" in result.stdout
    assert f"{dead} is unhealthy: failed to commit proposal:" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: unhealthy cluster"


@pytest.mark.parametrize("op", ["put", "get", "txn"])
def test_bench_json(cluster: ThreadCluster, op: str) -> None:
    result = run(
        "--endpoints",
        cluster.endpoints,
        "-w",
        "json",
        "bench",
        op,
        "--clients",
        "4",
        "--conns",
        "2",
        "--total",
        "40",
        "--key-size",
        "12",
        "--key-space-size",
        "10",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["op"], data["succeeded"], data["errors"]) == (op, 40, 0)
    assert data["ops_per_sec"] > 0
    assert 0 < data["latency_ms"]["p50"] <= data["latency_ms"]["p99"] <= data["latency_ms"]["max"]
    run("--endpoints", cluster.endpoints, "del", "000000000000", "000000000010")


def test_bench_text(cluster: ThreadCluster) -> None:
    out = run(
        "--endpoints", cluster.endpoints, "bench", "get", "--total", "20", "--consistency", "s"
    )
    assert out.exit_code == 0, out.output
    assert "ops/s" in out.stdout and "p99" in out.stdout


def test_help_of_every_command() -> None:
    for args in (
        [],
        ["put"],
        ["get"],
        ["del"],
        ["txn"],
        ["compaction"],
        ["endpoint", "status"],
        ["endpoint", "health"],
        ["server"],
        ["cluster", "up"],
        ["bench", "put"],
    ):
        result = run(*args, "--help")
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and "kvctl" in result.stdout
