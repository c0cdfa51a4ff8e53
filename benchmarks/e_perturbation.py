"""How much does E change the gradient that ALTO's moments see? A measurement along real training.

E replaces the (clipped) gradient :math:`g_k` by :math:`\\hat g_k = g_k + \\alpha a_k`, and with E's
one buffer (the EMA :math:`e_{k-1}` of past gradients) :math:`\\alpha a_k = \\alpha(1-\\beta_1)(g_k -
e_{k-1})`. This script trains the Fashion-MNIST MLP of the studies with ALTO (each configuration as
``valleys study`` runs it: ``create_optimizer``, constant lr, global-norm clipping 1.0) and records,
before every step, over all parameters together,

- the relative perturbation :math:`\\rho_k = \\lVert \\hat g_k - g_k \\rVert / \\lVert g_k \\rVert`;
- the cosine between :math:`\\hat g_k` and :math:`g_k`.

Adam-type normalisation ignores a common factor on the gradient, so what can change ALTO's path
relative to Lamb's is the part of the perturbation that is not parallel to :math:`g_k`; the cosine
says how much of it there is. Usage::

    .venv/bin/python benchmarks/e_perturbation.py --out benchmarks/results/e-perturbation.json

Prints a Markdown table; see docs/results/study-batch-sweep/README.md for the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from valleys.bench.run.batches import accumulate_gradients, epoch_batches
from valleys.bench.tasks import TaskOptions, build_task
from valleys.optim import create_optimizer


@dataclass(frozen=True)
class Setting:
    """One ALTO configuration of the studies."""

    label: str
    batch_size: int
    beta1: float
    alpha: float
    lr: float
    epochs: int


SETTINGS = [
    Setting("batch sweep, full batch (paper's VGG E)", 60000, 0.999, -5.0, 0.01, 30),
    Setting("batch sweep, batch 8192 (paper's VGG E)", 8192, 0.999, -5.0, 0.01, 30),
    Setting("paper's large-batch default", 8192, 0.99, -5.0, 0.01, 30),
    Setting("(β1, α) grid corner", 8192, 0.9, -8.0, 0.01, 8),
    Setting("paper's small-batch default", 256, 0.01, 0.5, 0.001, 2),
]


def measure(setting: Setting, seed: int = 0) -> dict[str, object]:
    """Train with ``setting`` and return ρ and cos per step, with summaries."""
    torch.manual_seed(seed)
    task = build_task("fashion-mnist", TaskOptions(model="mlp"))
    model = task.build_model()
    optimizer = create_optimizer(
        "alto",
        model,
        lr=setting.lr,
        batch_size=setting.batch_size,
        betas=(setting.beta1, 0.9, 0.99),
        alpha=setting.alpha,
    )
    group = optimizer.param_groups[0]
    max_norm = group["max_grad_norm"]
    coefficient = setting.alpha * (1 - setting.beta1)
    rho: list[float] = []
    cosine: list[float] = []
    for epoch in range(setting.epochs):
        batches = epoch_batches(len(task.train), setting.batch_size, seed, epoch)
        for index in batches:
            optimizer.zero_grad()
            accumulate_gradients(model, task, task.train, index, micro_batch_size=8192)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            grads = torch.cat([p.grad.flatten() for p in params])
            if max_norm is not None:
                grads = grads * torch.clamp(max_norm / (grads.norm() + 1e-6), max=1.0)
            emas = torch.cat(
                [
                    optimizer.state[p]["grad_ema"].flatten()
                    if "grad_ema" in optimizer.state[p]
                    else torch.zeros_like(p).flatten()
                    for p in params
                ]
            )
            perturbation = coefficient * (grads - emas)
            ghat = grads + perturbation
            rho.append(float(perturbation.norm() / grads.norm()))
            cosine.append(float(torch.nn.functional.cosine_similarity(ghat, grads, dim=0)))
            optimizer.step()
    tail = max(1, len(rho) // 2)
    return {
        **asdict(setting),
        "steps": len(rho),
        "coefficient": coefficient,
        "rho": rho,
        "cosine": cosine,
        "rho_first": rho[0],
        "rho_mean_second_half": statistics.fmean(rho[-tail:]),
        "cosine_mean_second_half": statistics.fmean(cosine[-tail:]),
        "cosine_min": min(cosine),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file for every step's values")
    args = parser.parse_args()
    results = [measure(s) for s in SETTINGS]
    print(
        "| setting | batch | β1 | α | α(1−β1) | steps | ρ at step 1 | ρ, mean of 2nd half "
        "| cos(ĝ, g), mean of 2nd half | cos, min |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['label']} | {r['batch_size']} | {r['beta1']} | {r['alpha']} "
            f"| {r['coefficient']:+.4f} | {r['steps']} | {r['rho_first']:.4f} "
            f"| {r['rho_mean_second_half']:.4f} | {r['cosine_mean_second_half']:.5f} "
            f"| {r['cosine_min']:.5f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
