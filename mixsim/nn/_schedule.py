"""Which CompeteSMoE layers compete at which training step (THEORY.md section 6).

The schedule is host-side data: a layer asks it for a Python ``bool``, so deciding to compete
never reads a device tensor (the authors' code calls ``.item()`` on a GPU buffer every step).
Each step's draw is a pure function of ``(seed, step)``, so the schedule is reproducible, does not
depend on the order in which layers ask, and can be queried for any step at any time.

Rule at step ``s`` with ``L`` registered layers:

1. ``s < warmup``: no layer competes.
2. Otherwise draw ``u_0 .. u_{L-1}`` iid uniform on [0, 1) from a Philox stream keyed by
   ``(seed, s)``; layer ``l`` is a candidate when ``u_l < rate``.
3. If more than ``max_layers_per_step`` layers are candidates, the ones with the smallest ``u``
   compete (a uniformly random subset, since the ``u`` are iid). The authors instead shift excess
   competitions to neighbouring steps; dropping them is simpler and stateless, and lowers the
   realised rate only when ``rate * L`` approaches the cap [C].

One schedule per model: :meth:`CompetitionSchedule.attach` numbers the competition layers of a
model ``0 .. L-1`` in module order and makes them all ask this schedule, so the cap applies across
them and one ``step()`` per training step drives them all (pass ``optimizer=`` and the optimiser's
steps do it). Attaching a second model of the same architecture (an EMA or eval copy) maps its
layers onto the same ids: the twin layers compete together and the table does not change.

Decisions are precomputed as a tuple of Python bools (:attr:`decisions`) whenever the step or the
layers change, so a layer's forward reads a constant; under ``torch.compile`` the decision is a
guarded Python value, outside the traced graph (two cached graphs: compete or not).
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any

import numpy as np

from ..checks import check_int

__all__ = ["CompetitionSchedule", "SETTINGS", "check_settings", "default_extra_state"]

SETTINGS = ("warmup", "rate", "max_layers_per_step", "seed")  # with the step, they decide the table


def check_settings(schedule: "CompetitionSchedule", saved: dict[str, Any]) -> None:
    """Raise ValueError naming the first setting in ``saved`` that differs from ``schedule``'s."""
    for name in SETTINGS:
        if name in saved and saved[name] != getattr(schedule, name):
            raise ValueError(f"schedule mismatch on load: the checkpoint's {name}={saved[name]!r}, this schedule's "
                             f"{name}={getattr(schedule, name)!r}; build the schedule with the checkpoint's settings")


def _is_competition_layer(module: Any) -> bool:
    """A layer that asks a schedule: it says so (``uses_competition_schedule``) and routes by competition."""
    return bool(getattr(module, "uses_competition_schedule", False)) and getattr(module, "router", None) == "competition"


class _instance_or_class:
    """Method descriptor: ``obj.f(...)`` as usual; ``Cls.f(*args, **kwargs)`` calls ``Cls(**kwargs).f(*args)``."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: Any, cls: type) -> Any:
        if obj is not None:
            return self.func.__get__(obj, cls)

        def build_then_call(model: Any, *, optimizer: Any = None, **kwargs: Any) -> Any:
            return self.func(cls(**kwargs), model, optimizer=optimizer)
        build_then_call.__doc__ = self.func.__doc__
        return build_then_call


class CompetitionSchedule:
    """Seeded, stateless schedule of competition steps shared by the CompeteSMoE layers of a model.

    Parameters
    ----------
    warmup : int or float, default 0
        Steps without competition at the start. A float in [0, 1) is a fraction of
        ``total_steps`` (the authors' convention), which must then be given.
    rate : float, default 0.05
        Probability that a layer competes at a step after warm-up (authors: 0.05 to 0.07).
    max_layers_per_step : int or None, default None
        At most this many layers compete at one step; None means no cap.
    seed : int, default 0
        Root seed; the draws of step ``s`` depend only on ``(seed, s)``.
    total_steps : int, optional
        Needed only when ``warmup`` is a fraction.
    warn_after : int or None, default 32
        Warn (``RuntimeWarning``, once) when a layer has run this many training forwards at one
        step: :meth:`step` is probably never called, and a layer that competes at that step
        would compete on every batch at E times the feed-forward cost. Raise it for gradient
        accumulation over more micro-batches; None turns the check off. Not checked inside
        ``torch.compile`` (it is host bookkeeping).

    Attributes
    ----------
    n_layers : int
        Number of layers registered so far (:meth:`register`).
    current_step : int
        The step that :meth:`competes` answers for; advance it with :meth:`step`.
    decisions : tuple of bool
        Which layers compete at :attr:`current_step` (``layers_at(current_step)`` as Python bools).

    Examples
    --------
    One schedule per model, stepped by the optimiser:

    >>> model = nn.Sequential(CompeteSMoE(64, 128, 8, 2), CompeteSMoE(64, 128, 8, 2))  # doctest: +SKIP
    >>> sched = CompetitionSchedule(rate=0.05, max_layers_per_step=1).attach(model, optimizer=opt)  # doctest: +SKIP
    >>> CompetitionSchedule.attach(model, rate=0.05)  # class form: a new schedule with these arguments  # doctest: +SKIP

    Or by hand:

    >>> sched = CompetitionSchedule(warmup=100, rate=0.05, max_layers_per_step=2, seed=0)
    >>> layers = [CompeteSMoE(64, 128, 8, 2, schedule=sched) for _ in range(4)]  # doctest: +SKIP
    >>> for batch in data:  # doctest: +SKIP
    ...     loss = ...; loss.backward(); opt.step(); sched.step()
    """

    def __init__(
        self,
        warmup: int | float = 0,
        rate: float = 0.05,
        max_layers_per_step: int | None = None,
        seed: int = 0,
        *,
        total_steps: int | None = None,
        warn_after: int | None = 32,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise TypeError(f"rate must be a float in [0, 1]; got {type(rate).__name__}")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"rate must be in [0, 1]; got {rate}")
        if isinstance(warmup, bool) or not isinstance(warmup, numbers.Real):
            raise TypeError(f"warmup must be an int (steps) or a float fraction in [0, 1); got {type(warmup).__name__}")
        if isinstance(warmup, numbers.Integral):
            warmup_steps = check_int(warmup, "warmup", 0)
        else:
            if not 0.0 <= float(warmup) < 1.0:
                raise ValueError(f"warmup as a fraction must be in [0, 1); got {warmup}")
            if total_steps is None:
                raise ValueError("warmup is a fraction: pass total_steps too (or give warmup as an int number of steps)")
            warmup_steps = int(float(warmup) * check_int(total_steps, "total_steps", 1))
        if max_layers_per_step is not None:
            max_layers_per_step = check_int(max_layers_per_step, "max_layers_per_step", 1)
        self.warmup = warmup_steps
        self.rate = float(rate)
        self.max_layers_per_step = max_layers_per_step
        self.seed = check_int(seed, "seed", 0)
        self.warn_after = None if warn_after is None else check_int(warn_after, "warn_after", 1)
        self.n_layers = 0
        self.current_step = 0
        self._cache: tuple[int, int, np.ndarray] | None = None  # (step, n_layers, mask)
        self._forwards: list[int] = []  # training forwards per layer since the last step
        self._warned = False
        self._hooks: list[Any] = []
        self._refresh()

    def __repr__(self) -> str:
        return (f"CompetitionSchedule(warmup={self.warmup}, rate={self.rate}, "
                f"max_layers_per_step={self.max_layers_per_step}, seed={self.seed}, n_layers={self.n_layers})")

    # -- bookkeeping -----------------------------------------------------------------------------
    def register(self) -> int:
        """Add a layer; returns its id (0, 1, ...)."""
        self.n_layers += 1
        self._cache = None
        self._refresh()
        return self.n_layers - 1

    @_instance_or_class
    def attach(self, model: Any, *, optimizer: Any = None) -> "CompetitionSchedule":
        """Drive every competition layer of ``model`` by this schedule; returns the schedule.

        The layers (``MoE`` with ``router="competition"``, e.g. :class:`CompeteSMoE`) are
        numbered ``0 .. L-1`` in ``model.modules()`` order, replacing any schedule they had
        (a ``CompeteSMoE`` built without one has its own one-layer schedule). Attaching another
        model of the same architecture (an EMA copy) gives its layers the same ids, so the table of
        the first model does not change. Called on the class, ``CompetitionSchedule.attach(model,
        **kwargs)`` first builds ``CompetitionSchedule(**kwargs)``.

        Parameters
        ----------
        model : torch.nn.Module
        optimizer : torch.optim.Optimizer, optional
            Step the schedule after each of its steps (``register_step_post_hook``), so no
            ``schedule.step()`` call is needed.

        Raises
        ------
        ValueError
            ``model`` has no competition layer.
        """
        layers = [m for m in model.modules() if _is_competition_layer(m)]
        if not layers:
            raise ValueError("model: no competition layer found (MoE with router='competition' or CompeteSMoE)")
        for i, layer in enumerate(layers):
            layer.schedule, layer.layer_id = self, i
        if len(layers) > self.n_layers:
            self.n_layers = len(layers)
            self._cache = None
        if optimizer is not None:
            if not hasattr(optimizer, "register_step_post_hook"):
                raise TypeError(f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
            self._hooks.append(optimizer.register_step_post_hook(lambda *_: self.step()))
        self._refresh()
        return self

    def step(self) -> None:
        """Advance to the next training step (call once per optimiser step)."""
        self.current_step += 1
        self._refresh()

    def set_step(self, step: int) -> None:
        """Jump to ``step`` (e.g. when resuming from a checkpoint)."""
        self.current_step = check_int(step, "step", 0)
        self._refresh()

    def _refresh(self) -> None:
        self.decisions = tuple(bool(b) for b in self.layers_at(self.current_step))
        self._forwards = [0] * max(self.n_layers, 1)

    def note_forward(self, layer_id: int) -> None:
        """Count a training forward of ``layer_id`` at the current step (for the never-stepped warning)."""
        if self.warn_after is None or self._warned or layer_id >= len(self._forwards):
            return
        self._forwards[layer_id] += 1
        if self._forwards[layer_id] >= self.warn_after:
            self._warned = True
            warnings.warn(f"CompetitionSchedule: layer {layer_id} ran {self._forwards[layer_id]} training forwards at "
                          f"step {self.current_step}; call schedule.step() once per optimiser step (or attach(model, "
                          f"optimizer=opt)), else it competes on every batch or never (warn_after={self.warn_after})",
                          RuntimeWarning, stacklevel=4)

    def settings(self) -> dict[str, Any]:
        """What decides the table besides the step: ``warmup`` (steps), ``rate``, ``max_layers_per_step``, ``seed``."""
        return {name: getattr(self, name) for name in SETTINGS}

    def state_dict(self) -> dict[str, Any]:
        """The schedule's step and its :meth:`settings` (checked when loaded)."""
        return {"current_step": self.current_step, **self.settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the step, after checking the settings saved with it.

        Raises
        ------
        ValueError
            ``state`` has no ``current_step``, or a saved setting differs from this schedule's
            (the message names it): the checkpoint was made with another schedule. A state
            without settings (saved before they were) restores the step only.
        """
        if not isinstance(state, dict) or "current_step" not in state:
            raise ValueError(f"state must be a dict with 'current_step'; got {state!r}")
        check_settings(self, state)
        self.set_step(state["current_step"])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_hooks": []}  # optimiser hooks stay with the original

    # -- queries ---------------------------------------------------------------------------------
    def layers_at(self, step: int) -> np.ndarray:
        """Boolean array of shape (n_layers,): which layers compete at ``step``."""
        step = check_int(step, "step", 0)
        n = max(self.n_layers, 1)
        if self._cache is not None and self._cache[:2] == (step, n):
            return self._cache[2]
        if step < self.warmup or self.rate == 0.0:
            mask = np.zeros(n, dtype=bool)
        else:
            u = np.random.Generator(np.random.Philox(key=self.seed, counter=[0, 0, 0, step])).random(n)  # (n,)
            mask = u < self.rate
            cap = self.max_layers_per_step
            if cap is not None and mask.sum() > cap:
                keep = np.argsort(np.where(mask, u, np.inf), kind="stable")[:cap]
                mask = np.zeros(n, dtype=bool)
                mask[keep] = True
        mask.setflags(write=False)
        self._cache = (step, n, mask)
        return mask

    def competes(self, layer_id: int, step: int | None = None) -> bool:
        """Whether layer ``layer_id`` competes at ``step`` (default: :attr:`current_step`)."""
        layer_id = check_int(layer_id, "layer_id", 0)
        if layer_id >= max(self.n_layers, 1):
            raise ValueError(f"layer_id {layer_id} is not registered (n_layers={self.n_layers}); call register() first")
        return bool(self.layers_at(self.current_step if step is None else step)[layer_id])

    def table(self, n_steps: int, start: int = 0) -> np.ndarray:
        """Boolean array of shape (n_steps, n_layers): the schedule of steps ``start .. start + n_steps - 1``."""
        n_steps = check_int(n_steps, "n_steps", 0)
        return np.stack([self.layers_at(s) for s in range(start, start + n_steps)]) if n_steps else np.zeros((0, max(self.n_layers, 1)), bool)


def default_extra_state(module: Any, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook of the layers: a ``state_dict`` saved before the layers had an
    extra state (the schedule's step) loads strictly, and the schedule keeps its step."""
    state_dict.setdefault(f"{prefix}_extra_state", {"schedule_step": None})
