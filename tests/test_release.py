"""What an installed mixsim carries (issue 21): the shipped studies found by name from any folder, a
local ./studies file winning over a shipped one, one version everywhere, and the two-study
comparison (issue 20) against compare_rates on the same series."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

import mixsim
import test_study_support as sup
from mixsim.cli import main
from mixsim.rates import compare_rates
from mixsim.study import (comparison_table, find_study, list_studies, load_results, load_study, read_meta, run_study,
                          verdict_counts)
from mixsim.study.compare import series

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (ROOT / "studies").glob("*.toml"))


# ---------------------------------------------------------------------------------------------
# packaging
# ---------------------------------------------------------------------------------------------

def test_pyproject_lists_every_package_and_ships_the_studies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    folders = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mixsim").rglob("__init__.py"))
    assert sorted(tool["packages"]) == sorted(folders + ["mixsim.studies"])
    assert tool["package-dir"] == {"mixsim.studies": "studies"} and tool["package-data"]["mixsim.studies"] == ["*.toml"]
    assert project["project"]["dynamic"] == ["version"] and "version" not in project["project"]
    assert tool["dynamic"]["version"] == {"attr": "mixsim.version.__version__"}


def test_one_version_everywhere(capsys, tmp_path):
    from mixsim.version import __version__

    assert mixsim.__version__ is __version__
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mixsim {__version__}"
    run_study(sup.tiny_spec(), tmp_path / "out", engine=sup.FAKE, progress=False)
    assert read_meta(tmp_path / "out")["versions"]["mixsim"] == __version__  # the code that ran, not the dist metadata


# ---------------------------------------------------------------------------------------------
# studies by name: shipped, and a local file that wins
# ---------------------------------------------------------------------------------------------

def test_shipped_studies_are_found_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no studies/ here
    found = list_studies()
    assert [s.name for s in found] == SHIPPED and {s.origin for s in found} == {"shipped"}
    spec = load_study("smoke")
    assert spec.name == "smoke" and spec.hash == load_study(ROOT / "studies" / "smoke.toml").hash
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in SHIPPED) and "(shipped: " in listed and "(local: " not in listed
    with pytest.raises(FileNotFoundError, match="known: .*'smoke'"):
        load_study("no_such_study")


def test_a_local_study_overrides_the_shipped_one_of_the_same_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    text = (ROOT / "studies" / "smoke.toml").read_text()
    assert "\nroot_seed = 1\n" in text
    (tmp_path / "studies" / "smoke.toml").write_text(text.replace("\nroot_seed = 1\n", "\nroot_seed = 99\n"))
    (tmp_path / "studies" / "mine.toml").write_text(text)
    local = find_study("smoke")
    assert local.origin == "local" and local.overrides_shipped and local.path == tmp_path / "studies" / "smoke.toml"
    assert find_study("mine").origin == "local" and not find_study("mine").overrides_shipped
    assert find_study("softmax_exact").origin == "shipped"
    spec = load_study("smoke")
    assert spec.source == str(tmp_path / "studies" / "smoke.toml") and spec.root_seed == 99
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "smoke" in listed and "(local, overrides shipped: " in listed and "(local: " in listed


# ---------------------------------------------------------------------------------------------
# two studies compared
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    a = sup.tiny_spec().with_overrides({"name": "a", "replications": 4})
    b = sup.tiny_spec().with_overrides({"name": "b", "replications": 4, "root_seed": 8})
    run_study(a, root / "a", engine=sup.FAKE, progress=False)
    run_study(b, root / "b", engine=sup.FAKE, progress=False)
    return root / "a", root / "b"


def test_comparison_table_is_compare_rates_of_each_series(two_studies):
    a, b = two_studies
    table = comparison_table(a, b, metrics=["D1", "D2"], label="test", n_boot=300)
    assert list(table["metric"]) == ["D1", "D2"] and set(table["comparison"]) == {"test"}
    assert set(table["a"]) == {"a"} and set(table["b"]) == {"b"}
    ta, tb = load_results(a), load_results(b)
    for row in table.to_dict("records"):
        sa, sb = series(ta, row["metric"]), series(tb, row["metric"])
        c = compare_rates(sa["n"], sa["value"], sb["n"], sb["value"], n_boot=300)
        assert (row["difference"], row["difference_low"], row["difference_high"], row["verdict"]) == (
            c.difference, c.difference_low, c.difference_high, c.verdict)
        assert row["rate_a"] == c.a.rate and row["n_ratio"] == c.n_ratio[len(c.eps) // 2]


def test_verdict_counts_count_the_rows():
    import pandas as pd

    comp = pd.DataFrame({"metric": ["x", "x", "x", "y"], "verdict": ["faster", "cannot tell", "faster", "slower"]})
    counts = verdict_counts(comp)
    assert counts.to_dict("records") == [{"metric": "x", "truths": 3, "faster": 2, "slower": 0, "cannot tell": 1},
                                         {"metric": "y", "truths": 1, "faster": 0, "slower": 1, "cannot tell": 0}]
    assert list(verdict_counts(comp.iloc[:0]).columns) == ["metric", "truths", "faster", "slower", "cannot tell"]
    with pytest.raises(ValueError, match="by must be a column"):
        verdict_counts(comp, by="group")


def test_mixsim_compare_prints_the_table_and_counts(two_studies, tmp_path, capsys):
    a, b = two_studies
    csv = tmp_path / "c.csv"
    assert main(["compare", str(a), str(b), "--metric", "D1", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "truths per verdict" in printed and "D1" in printed
    import pandas as pd

    written = pd.read_csv(csv)
    expected = comparison_table(a, b, metrics=["D1"])
    np.testing.assert_array_equal(written["difference"], expected["difference"])
