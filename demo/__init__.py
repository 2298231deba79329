"""`micro demo`: the whole pipeline offline on the project's demo data, ending in one readable report."""

from ..lazy import lazy_exports

_EXPORTS = {"DemoConfig": ".config", "run_demo": ".pipeline"}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
