"""A character-level language model whose feed-forward blocks are mixsim MoE layers.

Trains a small causal transformer on the Python standard library's own source text (every
machine with Python has it offline) and compares four feed-forward blocks at equal active
parameters for a fixed step budget on CPU, over several seeds:

``dense``        one feed-forward block of width K * d_expert
``token_choice`` mixsim.nn.MoE, E experts of width d_expert, top-K token choice
``competesmoe``  mixsim.nn.CompeteSMoE with one CompetitionSchedule for the model (attach)
``usmoe``        mixsim.nn.MoE(router="usmoe"): T*K pairs chosen globally per batch

Validation loss (nats per byte) against the step is plotted to ``figures/tiny_lm.png`` and the
final numbers are printed as a table. Run from the repository root::

    python examples/tiny_lm.py                  # the README numbers (a few minutes, 1 thread)
    python examples/tiny_lm.py --steps 50 --seeds 1 --out /tmp/tiny.png
    python examples/tiny_lm.py --expert-parallel 2   # the MoE blocks' experts over 2 CPU processes

``--expert-parallel W`` trains the MoE variants with :class:`mixsim.nn.ExpertParallel` on W gloo
processes on this machine: each process holds E/W experts of every MoE block and a replica of
everything else, takes its own batches (data parallel), and the replicated parameters' gradients
are summed over the processes (the expert gradients already are, through the exchanges).

Causality: token choice and competition route each token by its own features, so they suit a
causal model. USMoE chooses pairs over the whole batch, so a token's experts depend on other
tokens (future ones included): a small leak that an autoregressive model should not have at
inference. It is trained here as the issue asks, and flagged in the table.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import mixsim.nn as mnn

# -- defaults (the README numbers) --------------------------------------------------------------
CORPUS_MODULES = ("functools.py", "textwrap.py", "argparse.py", "collections/__init__.py", "inspect.py",
                  "dataclasses.py", "typing.py", "pathlib.py", "random.py", "string.py")  # ~1 MB of text
VARIANTS = ("dense", "token_choice", "competesmoe", "usmoe")


@dataclass(frozen=True)
class Config:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context: int = 64
    batch: int = 16
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 64  # the dense block has width top_k * d_expert: equal active parameters
    steps: int = 600
    eval_every: int = 50
    eval_batches: int = 4
    lr: float = 3e-3
    competition_rate: float = 0.05  # authors: 0.05 to 0.07 per layer and step
    competition_warmup: float = 0.1  # fraction of the steps without competition
    max_chars: int | None = None  # cut the corpus (tests)


# -- data ---------------------------------------------------------------------------------------
def load_corpus(max_chars: int | None = None) -> torch.Tensor:
    """Bytes of the standard library modules in CORPUS_MODULES, as a LongTensor (n,)."""
    root = pathlib.Path(os.__file__).parent
    text = b"".join((root / m).read_bytes() for m in CORPUS_MODULES if (root / m).exists())
    if max_chars is not None:
        text = text[:max_chars]
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def batch_at(data: torch.Tensor, cfg: Config, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    start = torch.randint(len(data) - cfg.context - 1, (cfg.batch,), generator=gen)  # (B,)
    idx = start[:, None] + torch.arange(cfg.context + 1)  # (B, L+1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]  # inputs, next bytes: (B, L) each


# -- model --------------------------------------------------------------------------------------
class Dense(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.down(F.gelu(self.up(x))), x.new_zeros(())


class Experts(nn.Module):
    def __init__(self, layer: mnn.MoE) -> None:
        super().__init__()
        self.moe = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, aux = self.moe(x)
        return out, aux.total()  # the authors' weights (DEFAULT_AUX_WEIGHTS)


def feed_forward(variant: str, cfg: Config) -> nn.Module:
    d, E, K, h = cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_expert
    if variant == "dense":
        return Dense(d, K * h)
    if variant == "competesmoe":
        return Experts(mnn.CompeteSMoE(d, h, E, K))
    return Experts(mnn.MoE(d, h, E, K, variant))


class Block(nn.Module):
    def __init__(self, variant: str, cfg: Config) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv, self.proj = nn.Linear(cfg.d_model, 3 * cfg.d_model), nn.Linear(cfg.d_model, cfg.d_model)
        self.ffn, self.n_heads = feed_forward(variant, cfg), cfg.n_heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.n_heads, d // self.n_heads).unbind(2)  # (B, L, h, d/h)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, d))  # (B, L, d)
        y, aux = self.ffn(self.ln2(x))
        return x + y, aux


class TinyLM(nn.Module):
    def __init__(self, variant: str, cfg: Config) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, cfg.d_model), nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList([Block(variant, cfg) for _ in range(cfg.n_layers)])
        self.ln, self.head = nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, 256)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tok(idx) + self.pos.weight[: idx.shape[1]]  # (B, L, d)
        aux = x.new_zeros(())
        for block in self.blocks:
            x, a = block(x)
            aux = aux + a
        return self.head(self.ln(x)), aux  # (B, L, 256) logits, summed aux losses


def active_params(model: TinyLM, cfg: Config, world: int = 1) -> int:
    """Parameters a token uses on a router step: every non-expert one, and K of the E experts
    (each of the ``world`` expert-parallel processes holds E / world of them)."""
    total = 0
    for name, p in model.named_parameters():
        if ".moe." in name and name.split(".")[-1] in ("w1", "w2", "b1", "b2"):
            total += p.numel() * world * cfg.top_k // cfg.n_experts
        else:
            total += p.numel()
    return total


# -- training -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: TinyLM, val: torch.Tensor, cfg: Config) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(12345)  # the same validation batches for every run
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = batch_at(val, cfg, gen)
        logits, _ = model(x)
        losses.append(F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)).item())
    model.train()
    return sum(losses) / len(losses)


def shard_experts(model: TinyLM) -> list[nn.Parameter]:
    """Wrap every MoE block in ExpertParallel (the default process group); returns the replicated parameters."""
    sharded = set()
    for m in list(model.modules()):
        if isinstance(m, Experts):
            m.moe = mnn.ExpertParallel(m.moe)
            sharded |= {id(p) for p in m.moe.expert_parameters()}
    return [p for p in model.parameters() if id(p) not in sharded]


def train(variant: str, seed: int, cfg: Config, train_data: torch.Tensor, val: torch.Tensor) -> dict:
    """Train one model; returns its validation curve, time and competition count.

    Inside an initialised process group of W > 1 ranks the MoE blocks are expert-parallel, each
    rank draws its own batches, and the loss is the mean over ranks.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(seed)  # initialisation: the same on every rank
    model = TinyLM(variant, cfg)
    replicated = shard_experts(model) if world > 1 else []
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    schedule = None
    if variant == "competesmoe":  # one schedule for the model, stepped by the optimiser
        schedule = mnn.CompetitionSchedule(warmup=cfg.competition_warmup, rate=cfg.competition_rate, seed=seed,
                                           total_steps=cfg.steps).attach(model, optimizer=opt)
    gen = torch.Generator().manual_seed(seed + 7919 * rank)  # batches (rank 0: as without parallelism)
    curve = [(0, evaluate(model, val, cfg))]
    start = time.process_time()
    for step in range(1, cfg.steps + 1):
        x, y = batch_at(train_data, cfg, gen)
        logits, aux = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)) + aux
        opt.zero_grad(set_to_none=True)
        (loss / world).backward()  # the experts' gradients sum over ranks through the exchanges
        for p in replicated:  # the router, attention, embeddings: sum too
            dist.all_reduce(p.grad)
        opt.step()
        lr_sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append((step, evaluate(model, val, cfg)))
    competitions = 0 if schedule is None else int(schedule.table(cfg.steps).sum())
    return {"variant": variant, "seed": seed, "curve": curve, "cpu_s": time.process_time() - start,
            "active_params": active_params(model, cfg, world), "competitions": competitions}


def run(cfg: Config, seeds: list[int], variants: tuple[str, ...] = VARIANTS, log=print) -> list[dict]:
    data = load_corpus(cfg.max_chars)
    n_train = int(0.9 * len(data))
    train_data, val = data[:n_train], data[n_train:]
    log(f"corpus: {len(data)} bytes of the Python {sys.version.split()[0]} standard library "
        f"({n_train} train, {len(val)} validation)")
    results = []
    for seed in seeds:
        for variant in variants:
            r = train(variant, seed, cfg, train_data, val)
            log(f"  seed {seed} {variant:13s} val loss {r['curve'][-1][1]:.4f}  ({r['cpu_s']:.1f} s CPU)")
            results.append(r)
    return results


# -- report -------------------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    rows = ["| block | active params | final val loss (nats/byte), mean ± sd | CPU s / run | competition steps (layer-steps) |",
            "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in results):
        rs = [r for r in results if r["variant"] == variant]
        final = torch.tensor([r["curve"][-1][1] for r in rs], dtype=torch.float64)
        sd = float(final.std()) if len(rs) > 1 else float("nan")
        note = " (not causal)" if variant == "usmoe" else ""
        rows.append(f"| {variant}{note} | {rs[0]['active_params']:,} | {float(final.mean()):.4f} ± {sd:.4f} (n={len(rs)}) "
                    f"| {sum(r['cpu_s'] for r in rs) / len(rs):.1f} | {sum(r['competitions'] for r in rs) / len(rs):.1f} |")
    return "\n".join(rows)


def plot(results: list[dict], path: str, cfg: Config) -> None:
    """Validation loss against the step: the whole run (left) and its second half, zoomed (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in results)):
        rs = [r for r in results if r["variant"] == variant]
        curves = torch.tensor([[v for _, v in r["curve"]] for r in rs])  # (seeds, points)
        steps = torch.tensor([s for s, _ in rs[0]["curve"]])
        for ax, keep in ((axes[0], steps >= 0), (axes[1], steps >= cfg.steps // 2)):
            ax.plot(steps[keep], curves.mean(0)[keep], label=f"{variant} (n={len(rs)})", color=f"C{i}", marker=".")
            if len(rs) > 1:
                ax.fill_between(steps[keep], curves.min(0).values[keep], curves.max(0).values[keep], color=f"C{i}", alpha=0.15)
    axes[0].set_ylabel("validation loss (nats per byte)")
    axes[1].set_title("second half (shaded: min-max over seeds)", fontsize=9)
    axes[0].set_title(f"tiny char LM: {cfg.n_layers} layers, d={cfg.d_model}, E={cfg.n_experts}, K={cfg.top_k}, "
                      f"equal active params", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training step")
    axes[1].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parallel_worker(rank: int, world: int, port: int, cfg: Config, seeds: list[int], variants: tuple[str, ...],
                     threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = run(cfg, seeds, variants, log=print if rank == 0 else (lambda *a: None))
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def run_expert_parallel(cfg: Config, seeds: list[int], world: int, threads: int = 1) -> list[dict]:
    """:func:`run` of the MoE variants with their experts over ``world`` gloo processes on this machine."""
    import torch.multiprocessing as mp

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # the processes import this file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        variants = tuple(v for v in VARIANTS if v != "dense")
        mp.start_processes(_parallel_worker, args=(world, port, cfg, seeds, variants, threads, out), nprocs=world,
                           start_method="spawn")
        return torch.load(out, weights_only=False)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=Config.steps)
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="figures/tiny_lm.png")
    ap.add_argument("--toy", action="store_true", help="a tiny model and corpus (seconds; for tests)")
    ap.add_argument("--expert-parallel", type=int, default=1, metavar="W",
                    help="train the MoE variants with their experts over W CPU processes (gloo)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config(steps=args.steps, eval_every=max(1, min(Config.eval_every, args.steps // 4)))
    if args.toy:
        cfg = replace(cfg, d_model=16, n_heads=2, context=16, batch=4, n_experts=4, d_expert=16, eval_batches=2,
                      max_chars=20000)
    if args.expert_parallel > 1:
        results = run_expert_parallel(cfg, list(range(args.seeds)), args.expert_parallel, args.threads)
    else:
        results = run(cfg, list(range(args.seeds)))
    print(table(results))
    plot(results, args.out, cfg)
    print(f"figure: {args.out}")
    return results


if __name__ == "__main__":
    main()
