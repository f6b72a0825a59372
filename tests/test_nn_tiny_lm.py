"""examples/tiny_lm.py at toy size: every block trains, the figure is written, runs are reproducible."""
from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest
import torch

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tiny_lm.py"


@pytest.fixture(scope="module")
def tiny_lm():
    spec = importlib.util.spec_from_file_location("tiny_lm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_lm"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["tiny_lm"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_toy_run_trains_every_block_and_plots(tiny_lm, tmp_path):
    out = tmp_path / "tiny.png"
    results = tiny_lm.main(["--toy", "--steps", "60", "--seeds", "2", "--out", str(out)])
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["variant"], r["seed"]) for r in results} == {(v, s) for v in tiny_lm.VARIANTS for s in (0, 1)}
    for r in results:
        first, last = r["curve"][0][1], r["curve"][-1][1]
        assert abs(first - math.log(256)) < 0.5  # untrained: about uniform over bytes
        assert last < first - 1.0, r["variant"]  # 60 steps learn at least the byte frequencies
    # equal active parameters: the MoE models differ from dense only by the routers (E * d per layer)
    # and the expert biases counted at K/E
    dense = next(r["active_params"] for r in results if r["variant"] == "dense")
    for r in results:
        assert abs(r["active_params"] - dense) <= 2 * (4 * 16 + 2 * 16 + 16)


def test_same_seed_same_curve(tiny_lm):
    cfg = tiny_lm.replace(tiny_lm.Config(), d_model=16, n_heads=2, context=16, batch=4, n_experts=4, d_expert=16,
                          eval_batches=1, steps=6, eval_every=3, max_chars=5000, competition_rate=1.0,
                          competition_warmup=0.0)
    data = tiny_lm.load_corpus(cfg.max_chars)
    a = tiny_lm.train("competesmoe", 3, cfg, data[:4000], data[4000:])
    b = tiny_lm.train("competesmoe", 3, cfg, data[:4000], data[4000:])
    assert a["curve"] == b["curve"] and a["competitions"] == b["competitions"] == 2 * 6  # rate 1: every layer-step


@pytest.mark.slow
def test_expert_parallel_flag_trains_on_two_processes(tiny_lm, tmp_path):
    # --expert-parallel 2: the MoE blocks' experts over 2 gloo processes; every MoE variant learns.
    # Slow: about 25 s on the shared 2-core machine, mostly two processes importing torch.
    results = tiny_lm.main(["--toy", "--steps", "20", "--seeds", "1", "--expert-parallel", "2", "--out", str(tmp_path / "ep.png")])
    assert [r["variant"] for r in results] == ["token_choice", "competesmoe", "usmoe"]
    dense_like = tiny_lm.active_params(tiny_lm.TinyLM("token_choice", tiny_lm.replace(
        tiny_lm.Config(), d_model=16, n_heads=2, context=16, batch=4, n_experts=4, d_expert=16)), tiny_lm.replace(
        tiny_lm.Config(), n_experts=4, d_expert=16))
    for r in results:
        first, last = r["curve"][0][1], r["curve"][-1][1]
        assert last < first - 0.5, r["variant"]
        assert r["active_params"] == dense_like  # the shards add up to the whole layer
    assert results[1]["competitions"] > 0
