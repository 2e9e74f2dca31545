#!/usr/bin/env python3
"""Runs ../shared/peerbench's driver (bench.py) with nodedns-agent added as one more peer, so the
agent is measured by the very same harness, workloads and pinning as unbound, dnsdist and the
reflector, in the same run. Everything else (arguments, output) is bench.py's.

The agent listens on 127.0.0.14:53 (pinned to CPU 1 like the other single-core peers, so it runs
one UDP worker and one runtime thread) and forwards everything to the harness's knot backend on
127.0.0.2:53; its cluster domain is one the harness never asks (`nodedns.invalid`) and its
authority is unreachable, so every name takes the upstream path and is cached from there.

Environment: NODEDNS_AGENT (the binary), PEERBENCH (the peerbench directory).
"""
import os
import sys

sys.path.insert(0, os.environ.get("PEERBENCH", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peerbench")))
import bench  # noqa: E402  (peerbench's driver)

AGENT = os.environ["NODEDNS_AGENT"]
_peers = bench.peers


def peers():
    p = _peers()
    p["nodedns-agent"] = dict(
        addr="127.0.0.14",
        threads="1 core",
        procs=[([AGENT, "--listen", "127.0.0.14:53", "--admin-listen", "127.0.0.14:9254",
                 "--upstream", "127.0.0.2:53", "--authority", "http://127.0.0.1:9", "--node-name", "bench",
                 "--cluster-domain", "nodedns.invalid"], bench.SERVER_CPU)],
    )
    return p


bench.peers = peers
bench.main()
