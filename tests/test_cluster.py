"""Sandboxes on a Ray cluster: a real local cluster of two nodes on this machine.

One cluster serves the whole module; the tests run in order. Placement and calls
come first, then a reload across both nodes, then the loss of a node, whose
sandboxes must serve again from the other one. At the end, stopping everything
must leave no Ray process and no sandbox process behind.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray", reason="the cluster extra is not installed: pip install -e '.[cluster]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")

import sandbox  # noqa: E402
from sandbox.testing import process_alive, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 16
V2 = textwrap.dedent('''
    from runtime.genserver import GenServer


    class Counter(GenServer):
        vsn = 2

        def init(self, start=0):
            return start

        def handle_call(self, request, state):
            if request == "version":
                return 2, state
            if request == "get":
                return state, state
            if request == "incr":
                return state + 1, state + 1
            raise ValueError(f"unknown request {request!r}")

        def code_change(self, old_vsn, state, extra):
            return state
''')

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _ray_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["name"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "raylet" in text or "gcs_server" in text or "ray::" in text:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes on this machine, on the loopback interface only."""
    # Keep every Ray address on 127.0.0.1: the test talks to no other interface.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"sandbox_slots": SLOTS}, "include_dashboard": False})
    second = c.add_node(num_cpus=1, resources={"sandbox_slots": SLOTS})
    c.wait_for_nodes()
    app = tmp_path_factory.mktemp("cluster") / "counter"
    shutil.copytree(ROOT / "examples" / "counter", app)
    state = {"cluster": c, "second": second, "app": app}
    yield state
    rt = state.get("rt")
    if rt is not None:
        rt.stop()
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()
    os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)


@pytest.fixture(scope="module")
def rt(cluster):
    runtime = sandbox.start(cluster="ray", ray_address=cluster["cluster"].address,
                            name="ci-cluster")
    cluster["rt"] = runtime
    return runtime


def test_sandboxes_spread_over_both_nodes_and_answer(rt, cluster):
    handles = [rt.create_sandbox(f"c{i}", cluster["app"]) for i in range(10)]
    nodes = {sb.node for sb in handles}
    assert len(nodes) == 2, f"all 10 sandboxes went to one node: {nodes}"
    for i, sb in enumerate(handles):
        assert sb.call("counter", ("add", i)) == i
    listed = {info["id"]: info for info in rt.list_sandboxes()}
    assert set(listed) == {f"c{i}" for i in range(10)}
    assert all(listed[sb.id]["node"] == sb.node for sb in handles)
    assert rt.get_sandbox_info("c3")["status"] == "running"


def test_the_kvstore_example_runs_on_a_node_as_on_one_host(rt, cluster):
    kv = rt.create_sandbox("kv", ROOT / "examples" / "kvstore", node=cluster["second"].node_id)
    assert kv.call("store", ("put", "answer", 42)) == "ok"
    assert kv.call("store", ("get", "answer")) == 42
    kv.destroy()


def test_a_node_hint_places_the_sandbox_there(rt, cluster):
    second = cluster["second"].node_id
    sb = rt.create_sandbox("pinned", cluster["app"], node=second[:12])
    assert sb.node == second and sb.info()["node"] == second
    with pytest.raises(sandbox.SandboxError, match="names 0 live nodes"):
        rt.create_sandbox("nowhere", cluster["app"], node="ffffffffffff")
    sb.destroy()
    with pytest.raises(sandbox.SandboxNotFound):
        sb.call("counter", "get")


def test_the_cluster_benchmark_measures_on_this_cluster(rt, cluster):
    """benchmarks/bench_cluster.py at toy sizes on this module's cluster: its smoke run
    (tests/test_cli_bench.py) starts no cluster of its own, Ray's start being the cost."""
    import sys

    if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
        sys.path.insert(0, str(ROOT))
    from test_benchmarks import check_record

    from benchmarks import bench_cluster

    before = {info["id"] for info in rt.list_sandboxes()}
    with sandbox.start() as local:
        records = bench_cluster.measure(rt, local, cluster["second"].node_id, runs=1, calls=5,
                                        creates=2, create_runs=1)
    assert [(r.benchmark, r.baseline) for r in records] == [
        ("cluster_call", "Ray actor method call on that node"),
        ("cluster_call", "call to a local sandbox (single host)"),
        ("cluster_create", "create 2 on one node"),
    ]
    for r in records:
        check_record(r.to_dict())
    assert {info["id"] for info in rt.list_sandboxes()} == before  # it cleans up after itself


def test_a_compile_error_stops_a_reload_before_any_node(rt):
    with pytest.raises(sandbox.CompileError):
        rt.hot_reload("c1", source={"counter": "def broken(:\n"})
    assert rt.sandbox("c1").call("counter", "get") == 1  # old code and state serve


def test_a_reload_reaches_sandboxes_on_both_nodes(rt, cluster):
    (cluster["app"] / "counter.py").write_text(V2)
    outcomes = rt.batch_hot_reload([f"c{i}" for i in range(10)])
    failed = {sid: out for sid, out in outcomes.items() if isinstance(out, BaseException)}
    assert not failed
    for i in range(10):
        sb = rt.sandbox(f"c{i}")
        assert sb.call("counter", "version") == 2  # new code...
        assert sb.call("counter", "get") == i  # ...same state
        assert sb.module_versions("counter")[-1]["version"] == 2


def test_the_sandboxes_of_a_lost_node_serve_again_from_the_other(rt, cluster):
    second = cluster["second"].node_id
    moved = [f"c{i}" for i in range(10) if rt.sandbox(f"c{i}").node == second]
    stayed = [f"c{i}" for i in range(10) if f"c{i}" not in moved]
    assert moved and stayed
    cluster["cluster"].remove_node(cluster["second"])

    def served_again(sid: str) -> bool:
        try:
            return rt.sandbox(sid).call("counter", "version", timeout=5) == 2
        except sandbox.SandboxUnavailable:
            return False  # the documented retriable error while it moves

    for sid in moved:
        try:
            wait_for(lambda sid=sid: served_again(sid), 120)
        except TimeoutError:
            pytest.fail(f"{sid} did not come back: {rt._record(sid)}")
        info = rt.get_sandbox_info(sid)
        assert info["node"] != second and info["relocations"] == 1
        assert rt.sandbox(sid).call("counter", "get") == 0  # memory state is lost, code is not
    for sid in stayed:
        assert rt.sandbox(sid).call("counter", "version") == 2
    assert not any(n["alive"] for n in rt.nodes() if n["node_id"] == second)


def test_a_node_that_joins_takes_new_placements(rt, cluster):
    third = cluster["cluster"].add_node(num_cpus=1, resources={"sandbox_slots": SLOTS})
    cluster["cluster"].wait_for_nodes()
    wait_for(lambda: any(n["node_id"] == third.node_id and n["alive"] for n in rt.nodes()),
             120, message="the new node got no agent")
    sb = rt.create_sandbox("newcomer", cluster["app"])
    assert sb.node == third.node_id  # the emptiest node
    assert sb.call("counter", "incr") == 1


DOOMED_HEAD = textwrap.dedent('''
    import json, sys
    import sandbox

    rt = sandbox.start(cluster="ray", ray_address=sys.argv[1], name="doomed-head")
    sb = rt.create_sandbox("orphan", sys.argv[2])
    agents = [agent.pid for agent in rt._agents.values()]
    print(json.dumps({"sandbox": sb.info()["pid"], "agents": agents}), flush=True)
    sys.stdin.read()  # until it is killed
''')


@pytest.mark.timeout(180)
def test_a_head_that_dies_takes_its_agents_and_sandboxes_down(cluster):
    # docs/cluster.md: the agents are Ray actors owned by the head's driver; Ray ends
    # them with it. A second head in its own process, SIGKILLed.
    import json
    import signal
    import subprocess
    import sys

    head = subprocess.Popen(
        [sys.executable, "-c", DOOMED_HEAD, cluster["cluster"].address, str(cluster["app"])],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        line = head.stdout.readline()
        assert line, "the second head did not start"
        pids = json.loads(line)
        doomed = [pids["sandbox"], *pids["agents"]]
        assert all(psutil.pid_exists(p) for p in doomed)
        head.send_signal(signal.SIGKILL)
        head.wait(30)
    finally:
        if head.poll() is None:
            head.kill()
            head.wait(30)
        head.stdin.close()
        head.stdout.close()

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(p) for p in doomed), 60,
             message="an agent or sandbox outlived its head")


def test_stopping_leaves_no_ray_or_sandbox_process(rt, cluster):
    pids = [info["pid"] for info in rt.list_sandboxes() if info.get("pid")]
    assert pids
    rt.stop()
    cluster["rt"] = None
    ray.shutdown()
    cluster["cluster"].shutdown()
    wait_for(lambda: not _ray_processes(), 60, message="Ray processes are left")
    wait_for(lambda: not any(process_alive(p) for p in pids), 30,
             message="sandbox processes outlived the cluster")
