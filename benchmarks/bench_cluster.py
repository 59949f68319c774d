"""Cluster figures: a call to a sandbox on another Ray node, and creates across two nodes.

Run alone: ``python benchmarks/bench_cluster.py [--quick] [--json PATH]``
(needs the ``cluster`` extra: ``pip install -e '.[cluster]'``; without Ray it
reports nothing and says so).

A local Ray cluster of two nodes runs on this machine (``ray.cluster_utils.Cluster``,
on the loopback interface). In one run it measures:

- **call p50 to a sandbox on the other node**: ``sb.call`` from the head through
  the node agent's control endpoint (TCP + token), against a plain Ray actor
  method call on that node (``ray.get(actor.ping.remote())``, no sandbox) and, as
  a second record, against a call to a sandbox of a single-host runtime in the
  head's own process (no network hop). Target: no worse than the Ray call
  (ratio <= 1.0): calls do not go through Ray.
- **create N sandboxes**: spread over the two nodes, against the same N created
  on one node (``node=`` hint), N = 100 (20 with ``--quick``). On one machine both
  nodes share its 2 cores, so spreading adds no CPU: the figure shows what the
  cluster's placement and shipping cost, not a speed-up.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:
    from benchmarks._harness import Record

COUNTER = Path(__file__).resolve().parent.parent / "examples" / "counter"


def _p50_us(fn: Any, n: int) -> float:
    for _ in range(max(5, n // 10)):  # warm-up
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main(quick: bool = False) -> list[Record]:
    from benchmarks._harness import make_record, progress

    try:
        import ray
        from ray.cluster_utils import Cluster
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        progress("bench_cluster: Ray is not installed (pip install -e '.[cluster]'): skipped")
        return []
    import sandbox

    runs = 3 if quick else 5
    calls = 200 if quick else 1000
    creates = 20 if quick else 100
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"sandbox_slots": 2 * creates + 4},
        "include_dashboard": False})
    other = cluster.add_node(num_cpus=1, resources={"sandbox_slots": 2 * creates + 4})
    cluster.wait_for_nodes()
    records: list[Record] = []
    try:
        progress("bench_cluster: cluster of 2 nodes up; starting the runtime")
        with sandbox.start(cluster="ray", ray_address=cluster.address, name="bench-cluster") as rt, \
                sandbox.start() as local:

            @ray.remote(num_cpus=0)
            class Ping:
                def ping(self) -> int:
                    return 1

            actor = Ping.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                other.node_id, soft=False)).remote()
            remote_sb = rt.create_sandbox("far", COUNTER, node=other.node_id)
            local_sb = local.create_sandbox("near", COUNTER)
            far, plain, near = [], [], []
            for i in range(runs):
                progress(f"bench_cluster: calls, run {i + 1}/{runs}")
                far.append(_p50_us(lambda: remote_sb.call("counter", "get"), calls))
                plain.append(_p50_us(lambda: ray.get(actor.ping.remote()), calls))
                near.append(_p50_us(lambda: local_sb.call("counter", "get"), calls))
            records.append(make_record(
                "cluster_call", "call p50, sandbox on another node", far, "us",
                "Ray actor method call on that node", plain, target="ratio <= 1.0"))
            records.append(make_record(
                "cluster_call", "call p50, sandbox on another node", far, "us",
                "call to a local sandbox (single host)", near,
                notes="the cost of the network hop through the node agent's endpoint"))
            remote_sb.destroy()
            spread, single = [], []
            create_runs = 1 if quick else 3
            for i in range(create_runs):
                progress(f"bench_cluster: {creates} creates, run {i + 1}/{create_runs}")
                for hint, out in ((None, spread), (other.node_id, single)):
                    t0 = time.perf_counter()
                    for k in range(creates):
                        rt.create_sandbox(f"b{i}-{k}", COUNTER, node=hint)
                    out.append(time.perf_counter() - t0)
                    for k in range(creates):
                        rt.destroy_sandbox(f"b{i}-{k}")
            records.append(make_record(
                "cluster_create", f"create {creates} sandboxes over 2 nodes", spread, "s",
                f"create {creates} on one node", single,
                notes="both nodes share this machine's cores: no speed-up is possible here"))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return records


if __name__ == "__main__":
    from benchmarks._harness import run_script

    sys.exit(run_script(main, description="Cluster: remote call and spread creates."))
