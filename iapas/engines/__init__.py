"""Where a batch of images is segmented: in this process (`local`) or on a Ray cluster (`ray`).

Both take the same inputs, write the same result files with the same atomic writer, and skip the
images whose results are already there, so a run can move between engines and still resume.
"""
from ..registry import Registry

ENGINES: Registry = Registry("engine")
ENGINES.register_lazy("local", "iapas.engines.local:run_local")
ENGINES.register_lazy("ray", "iapas.engines.ray_engine:run_ray")

__all__ = ["ENGINES"]
