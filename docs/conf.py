"""Sphinx configuration: the user guide (the README's sections, with its figures) and an API
reference from the numpydoc docstrings. Build (warnings are errors):

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html   # then open docs/_build/html/index.html
"""
from __future__ import annotations

import mixsim

project = "mixsim"
author = "the mixsim authors"
version = release = mixsim.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

autodoc_default_options = {"members": True, "imported-members": False}
autodoc_typehints = "none"  # the numpydoc sections give the types
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False  # autodoc lists the members once
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"mixsim {release}"
