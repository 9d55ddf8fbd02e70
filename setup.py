"""Kept for tools and habits that call ``python setup.py develop``; the package metadata lives
in pyproject.toml (``pip install -e .`` reads it directly)."""
from setuptools import setup

setup()
