"""`micro demo`: the whole pipeline offline on the project's demo data, ending in one readable report."""

from .pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
