"""Checkpoints and dtypes (issue 23 item 4): the schedule's settings travel in the state dict and a
mismatch on load names the setting; an input whose dtype is not the layer's raises, as nn.Linear
does; the loop backend compiles with fullgraph=True for inference."""
from __future__ import annotations

import io

import pytest
import torch

import mixsim.nn as mnn

D, H, E, K = 8, 16, 4, 2


def _model(**schedule):
    model = torch.nn.ModuleList([mnn.CompeteSMoE(D, H, E, K) for _ in range(2)])
    return model, mnn.CompetitionSchedule(**schedule).attach(model)


def _round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # the settings are plain values: a safe checkpoint


BASE = {"warmup": 10, "rate": 0.5, "max_layers_per_step": 1, "seed": 2}


def test_settings_travel_with_the_step():
    model, sched = _model(**BASE)
    sched.set_step(41)
    state = _round_trip(model.state_dict())
    assert state["0._extra_state"] == {"schedule_step": 41, "schedule": BASE}
    fresh, sched2 = _model(**BASE)
    fresh.load_state_dict(state)
    assert sched2.current_step == 41 and sched2.decisions == sched.decisions
    assert sched.state_dict() == {"current_step": 41, **BASE}


@pytest.mark.parametrize("name,value", [("warmup", 11), ("rate", 0.25), ("max_layers_per_step", None), ("seed", 3)])
def test_a_mismatch_on_load_names_the_setting(name, value):
    model, sched = _model(**BASE)
    sched.set_step(5)
    other, other_sched = _model(**(BASE | {name: value}))
    with pytest.raises(ValueError, match=f"{name}="):
        other.load_state_dict(_round_trip(model.state_dict()))
    with pytest.raises(ValueError, match=f"{name}="):
        other_sched.load_state_dict(sched.state_dict())
    assert other_sched.current_step == 0  # nothing restored


def test_a_checkpoint_without_settings_restores_the_step():
    model, sched = _model(**BASE)
    model.load_state_dict({**model.state_dict(), "0._extra_state": {"schedule_step": 7}, "1._extra_state": {"schedule_step": 7}})
    assert sched.current_step == 7
    sched.load_state_dict({"current_step": 9})
    assert sched.current_step == 9


@pytest.mark.parametrize("layer_dtype,x_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                                 (torch.bfloat16, torch.float32)])
def test_an_input_of_another_dtype_raises_as_nn_linear_does(layer_dtype, x_dtype):
    x = torch.randn(5, D, dtype=x_dtype)
    with pytest.raises(RuntimeError):
        torch.nn.Linear(D, D, dtype=layer_dtype)(x)  # the behaviour matched
    with pytest.raises(TypeError, match=f"x has dtype {x_dtype}.*experts are {layer_dtype}"):
        mnn.MoE(D, H, E, K, dtype=layer_dtype)(x)


def test_autocast_still_takes_any_float_input():
    layer = mnn.MoE(D, H, E, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(torch.randn(5, D, dtype=torch.float64))
    assert out.dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")  # torch's own (Dynamo), as in test_nn_compile
def test_loop_backend_compiles_fullgraph_for_inference():
    layer = mnn.MoE(D, H, E, K, dispatch="loop", generator=torch.Generator().manual_seed(0)).eval()
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(lambda t: layer(t)[0], fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x)[0], rtol=0, atol=0)
