"""Kept for tools and habits that call ``python setup.py develop``; the package metadata lives
in pyproject.toml (``pip install -e .`` reads it directly).

The one thing declared here: the shipped configs. They live in ``configs/`` at the top of the
repository (their paths are the ones every doc and command names) and are installed inside the
package as ``e3va_d2/configs``, so that ``e3va_d2.config.get_config`` finds them from a wheel
as from a checkout, without a symlink. setuptools maps the folder to that package; its files
are package data.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["e3va_d2", "e3va_d2.*"]) + ["e3va_d2.configs"],
    package_dir={"e3va_d2.configs": "configs"},
    package_data={
        "e3va_d2.configs": ["**/*.py", "**/*.yaml"],
        "e3va_d2.model_zoo": ["weights/*.pth"],
    },
)
