"""For the GPU check's CPU rehearsal: behave like the GPU machine's Python, which has no
plotly and no kaleido. Put this folder on PYTHONPATH (Python imports ``sitecustomize`` at
start-up); every ``import plotly`` / ``import kaleido`` then fails as it would there."""
import importlib.abc
import sys

BLOCKED = {"plotly", "kaleido"}


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for the rehearsal)")
        return None


sys.meta_path.insert(0, _Block())
