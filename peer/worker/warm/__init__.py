"""Warm Blender: one Blender per worker, kept running between blender-render tasks.

- `args`: which command lines the render server can run, and what they ask;
- `blender_server.py`: the server, running inside Blender (not imported here);
- `server_process`: one such process, its output and events;
- `pool`: the process per worker, its key and its hygiene.

See docs/warm-blender.md.
"""

from .args import RunCold, WarmPlan, plan_warm_render
from .pool import WarmBlenderPool, WarmOptions, WarmOutcome

__all__ = ["RunCold", "WarmBlenderPool", "WarmOptions", "WarmOutcome", "WarmPlan", "plan_warm_render"]
