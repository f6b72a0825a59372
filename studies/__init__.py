"""The studies shipped with mixsim: installed as the package data ``mixsim.studies`` (see
pyproject.toml) and read through importlib.resources by :mod:`mixsim.study.catalog`. This file
makes the folder an importable package in editable installs too; it holds no code."""
