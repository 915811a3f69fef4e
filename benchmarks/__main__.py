import argparse
import sys

from . import compile as compilation
from . import efficiency

BENCHMARKS = {"compile": compilation.main, "efficiency": efficiency.main}

parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run a Flamenco Peer benchmark.")
parser.add_argument("name", choices=sorted(BENCHMARKS))
parser.add_argument("args", nargs=argparse.REMAINDER)
ns = parser.parse_args()
sys.exit(BENCHMARKS[ns.name](ns.args))
