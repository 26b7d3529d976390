"""Run every benchmark in bench/ (each prints its own table with ratios measured in the same run)."""

import importlib
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
SKIP = {"common", "run_all"}

if __name__ == "__main__":
    import bench

    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if m.name not in SKIP]
    for name in sorted(names):
        mod = importlib.import_module(f"bench.{name}")
        if hasattr(mod, "main"):
            print(f"\n# bench/{name}.py", flush=True)
            mod.main([])
