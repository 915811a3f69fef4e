"""``python -m benchmarks NAME [ARGS]``: measured tables, never timed tests."""

import argparse
import sys

from . import cluster, efficiency, files, idle, warm
from . import compile as compilation

BENCHMARKS = {
    "cluster": cluster.main,  # discovery time, failover time, coordinator throughput
    "compile": compilation.main,  # job compilation time (10,000 frames) and rate
    "efficiency": efficiency.main,  # farm efficiency and queued-to-started latency
    "files": files.main,  # distributing a 512 MiB file to 4 peers vs one copy
    "idle": idle.main,  # user returns -> the worker stopped rendering
    "warm": warm.main,  # cold vs warm Blender vs one batch render
}

parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run a Flamenco Peer benchmark.")
parser.add_argument("name", choices=sorted(BENCHMARKS))
parser.add_argument("args", nargs=argparse.REMAINDER)
ns = parser.parse_args()
sys.exit(BENCHMARKS[ns.name](ns.args))
