"""The built-in dataset families; installed as `ssl_kd.datasets` (setup.py's package_dir).

Run from the repository root, `import datasets` finds this folder before site-packages and would
hide Hugging Face's `datasets` library. Imported under that top-level name, this module hands
over: it loads the library from the rest of sys.path in its place (sys.modules["datasets"]), so
`import datasets` gives Hugging Face's package wherever it runs.
"""
if __name__ == "datasets":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _repo]
    _spec = importlib.machinery.PathFinder.find_spec("datasets", _path)
    if _spec is None or _spec.loader is None:
        raise ModuleNotFoundError("No module named 'datasets' (Hugging Face's library): install it with "
                                  "pip install -e .[text]; this repository's datasets/ folder is ssl_kd.datasets",
                                  name="datasets")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["datasets"] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
