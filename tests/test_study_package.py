"""The mixsim.study package: spec hashes pinned (results directories of earlier runs must resume),
the spec imports neither the fitter nor mixsim.nn, one metric registry, one seed rule, one thread guard."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from mixsim.study import REGISTRY, MetricContext, StudySpec, apply_overrides, load_study, replicate_seed

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mixsim"

# StudySpec.hash of every shipped spec, computed with the code before the study package (issue 13).
# A results directory is keyed by this hash: a changed hash refuses (or, with --force, deletes) the
# results of a run in progress. Change a value here only with a SPEC_FORMAT bump and a note.
SHIPPED_HASHES = {
    "competition_exact": "187252004d460d2c9a4b6ca99ca40389f5c3525226d1f9a51f47cce13fe1c83c",
    "competition_overfit": "c5aa4fb45cd18a224e15d4eb4e73b74d8fe58500e2898e95bd94f6c105834f38",
    "competition_overfit_ensemble": "a85399300c010e1b3eb9017c8fa8739853a8a76a86a44e1ca42111511e37c025",
    "competition_overfit_tanh": "17d4b21356da4eb8a8edcfbf7f86b02382fd847853950125b1c6f3d545d9545a",
    "nn_sample_efficiency": "cea2a9596c08db26f6f69610427d67715eaa6e00dce1b23069d9329fcc8eaffb",
    "smoke": "158af7fe3c525e8c2d64cf649c41e08c25bff72263582c16c50865a8dd19dc14",
    "softmax_exact": "82675d4cf3277c490e06806470ff8d484f098fc9c5d14dc91a31ea8bdc07b0d4",
    "softmax_overfit": "5a3379c541be7737c0da952c25281fed599f993e11db714443c117614c72042d",
    "softmax_overfit_ensemble": "2f659c22715e627f0a53366f82c15e84d36aa53c23cfbdcf16340ddcb2472280",
    "softmax_overfit_tanh": "7a5ba5a02d4f8d590115a4a44add9125f3558559e3d964eee4b8a856a05882a4",
    # issue 19: the maximum-likelihood search studies (new; their hashes are first pinned here)
    "softmax_overfit_search": "09d6dfdc7cfdc5dd80a70a6a5dee5cec4ea2ad5f6b30dd24c3d711cfe32132b2",
    "competition_overfit_search": "a259f64c0c9e944df4e66fdbd35f3f79ee1ccabfe7957f072216c5bbc78f94c1",
    # issue 24: the matched arms of claim test v3 (new; first pinned here)
    "matched_linear_competition": "0b0e92f417a5b90270055eac4df11b8105af4dcb0383a447cd0bfa92c6736b1c",
    "matched_linear_softmax": "6d2553fa3c9019fcb1b95e3802412a89d687b66fed049236e8e1b1c740133adc",
    "matched_tanh_competition": "a62869110eecc5f310a8b9cc6504a95e8ed8dd8f1a915ffd184a4b0e0fb2b1c2",
    "matched_tanh_softmax": "3e15c7316562fa93a1a2ead046fed83682b60f53c76ea5e25410421786f31a24",
    "matched_linear_k4_competition": "acf2d80e1eb5c95a65de78b75dbde6944e1ba4eaedfa183423210c666ca24116",
    "matched_linear_k4_softmax": "b503420bc16468593d440272babf6abbbdbce7a6324e5975b0e0f3198adf6343",
}
# The same for the claim test's full scale (v3, declared in mixsim.study.claim.SCALES["full"] before the run;
# run by paper_repro.py --full and mixsim repro --full): the shipped specs with the full scale's overrides.
PAPER_FULL_HASHES = {
    "softmax_exact": "82675d4cf3277c490e06806470ff8d484f098fc9c5d14dc91a31ea8bdc07b0d4",
    "competition_exact": "187252004d460d2c9a4b6ca99ca40389f5c3525226d1f9a51f47cce13fe1c83c",
    "matched_linear_competition": "0b0e92f417a5b90270055eac4df11b8105af4dcb0383a447cd0bfa92c6736b1c",
    "matched_linear_softmax": "6d2553fa3c9019fcb1b95e3802412a89d687b66fed049236e8e1b1c740133adc",
    "matched_tanh_competition": "a62869110eecc5f310a8b9cc6504a95e8ed8dd8f1a915ffd184a4b0e0fb2b1c2",
    "matched_tanh_softmax": "3e15c7316562fa93a1a2ead046fed83682b60f53c76ea5e25410421786f31a24",
    "matched_linear_k4_competition": "fcae8392287bd682d6c8445dfe19ac15de0df6f5c0bbc755e7a58a706182037a",
    "matched_linear_k4_softmax": "8a55eebd870d35eb4b3452d664f8472019c405c3fe51dde54edc0ac8aa378068",
}


def test_every_shipped_spec_keeps_its_hash():
    shipped = {p.stem: p for p in (ROOT / "studies").glob("*.toml")}
    assert set(shipped) == set(SHIPPED_HASHES), "a new shipped spec: add its hash here"
    for name, path in shipped.items():
        assert load_study(path).hash == SHIPPED_HASHES[name], name


def test_paper_repro_full_specs_keep_their_hashes():
    """The claim test's full scale (now mixsim.study.claim, run by paper_repro.py and mixsim repro)."""
    import tomllib

    from mixsim.study.claim import SCALES, claim_spec

    from mixsim.study.claim import ARMS, CLAIM_STUDIES

    assert set(PAPER_FULL_HASHES) == set(CLAIM_STUDIES)
    kinds = {"softmax_exact": "exact", "competition_exact": "exact"} | {s: arm for arm, pair in ARMS.items() for s in pair}
    for name, want in PAPER_FULL_HASHES.items():
        path = ROOT / "studies" / f"{name}.toml"
        doc = apply_overrides(tomllib.loads(path.read_text()), dict(SCALES["full"][kinds[name]]))
        assert StudySpec.from_dict(doc, source=str(path), default_name=name).hash == want, name
        assert claim_spec(name, "full").hash == want, name


# ---------------------------------------------------------------------------------------------
# imports
# ---------------------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """Modules of mixsim a file imports at module level (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = here.rsplit(".", 1)[0] if path.name != "__init__.py" else here.removesuffix(".__init__")
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("mixsim")}


def _module_path(module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        path = _module_path(m)
        if path is None or m in seen:
            continue
        seen.add(m)
        todo.extend(_imports(path))
    return seen


@pytest.mark.parametrize("module", ["mixsim.study.spec", "mixsim.study.nn_options", "mixsim.study.metrics"])
def test_the_spec_imports_neither_the_fitter_nor_nn(module):
    reached = _closure(module)
    assert module in reached
    banned = [m for m in reached if m.startswith(("mixsim.nn", "mixsim.fit", "mixsim._em", "mixsim._newton",
                                                  "mixsim._layout", "mixsim._init", "mixsim.fitting"))]
    assert not banned, banned


def test_nn_option_module_imports_no_torch():
    tree = ast.parse((PACKAGE / "study" / "nn_options.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("torch" in n or "nn" in n.split(".") for n in names), names


def test_no_private_module_of_the_study_is_imported_from_outside_it():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "study":
            continue
        for m in _imports(path):
            parts = m.split(".")
            if len(parts) > 2 and parts[1] == "study":
                assert not any(p.startswith("_") for p in parts[2:]), (path, m)


# ---------------------------------------------------------------------------------------------
# one of each
# ---------------------------------------------------------------------------------------------

def test_nn_options_agree_with_mixsim_nn():
    mnn = pytest.importorskip("mixsim.nn")
    from mixsim.study import nn_options

    assert nn_options.ROUTERS == mnn.ROUTERS
    assert nn_options.AUX_WEIGHTS == mnn.DEFAULT_AUX_WEIGHTS


def test_old_names_are_aliases():
    import mixsim.study as study

    with pytest.warns(DeprecationWarning, match="RunnerHooks"):
        assert study.Engine is study.RunnerHooks  # the fitting engine is mixsim.fitting.engine
    with pytest.warns(DeprecationWarning, match="JOBLIB_BACKENDS"):
        assert study.BACKENDS == study.JOBLIB_BACKENDS == ("loky", "threading", "sequential", "dask")
    assert "Engine" not in study.__all__ and "BACKENDS" not in study.__all__
    from mixsim.study import metrics
    assert metrics.measure is metrics.compute_metrics and "measure" not in metrics.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        study.no_such_name  # noqa: B018
    assert study.METRICS is study.MLE_METRICS and set(study.METRICS) <= set(REGISTRY)
    assert set(study.NN_METRICS) <= set(REGISTRY)


def test_every_metric_is_one_function_of_a_context():
    import torch

    from mixsim.study.metrics import HeldOut, compute_metrics

    ctx = MetricContext(None, HeldOut(prediction=torch.tensor([1.0, 2.0]), labels=torch.tensor([1.0, 0.0]),
                                      mean=torch.tensor([0.0, 2.0])), n=10, k=2, seed=0)
    assert compute_metrics(["test_mse", "excess_mse"], ctx) == {"test_mse": 2.0, "excess_mse": 0.5}


def test_nested_torch_threads_restore_the_enclosing_count(one_thread):
    import torch

    from mixsim.study import torch_threads

    with torch_threads(1):
        with torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 1


def test_run_experiment_is_the_study_runner_and_matches_run_nn_task():
    import mixsim.study as study

    tiny = {"n_experts": 4, "d": 8, "d_hidden": 8, "teacher_hidden": 8, "steps": 4, "batch_size": 32, "n_test": 64,
            "routers": ["token_choice"]}
    df = study.run_nn_experiment(tiny, [32], replications=1, seed=3)
    seed = replicate_seed(3, 32, 0)
    direct = study.run_nn_task(tiny, 32, seed)
    assert df["seed"].tolist() == [seed] * len(direct)
    assert df["value"].tolist() == [r["value"] for r in direct]
    assert df["status"].tolist() == [r["status"] for r in direct]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
