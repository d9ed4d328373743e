"""ssl_kd: `algorithms/`, `datasets/` and `tools/` install inside the ssl_kd namespace (see DESIGN.md).

The metadata, dependencies, extras and the `ssl-kd` command are in pyproject.toml; this file keeps
the package layout, which maps top-level folders into the namespace.
"""
from setuptools import find_packages, setup

PACKAGES = find_packages(include=["ssl_kd", "ssl_kd.*"])  # a new sub-package of ssl_kd/ is installed without a listing
MAPPED = {"ssl_kd.algorithms": "algorithms", "ssl_kd.datasets": "datasets", "ssl_kd.tools": "tools"}

setup(packages=PACKAGES + list(MAPPED), package_dir=MAPPED)
