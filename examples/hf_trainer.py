"""ALTO in a Hugging Face ``transformers.Trainer``: a tiny BERT classifier, resumable.

The optimizer comes from :func:`valleys.create_optimizer` (its parameter groups: no weight decay
and no trust ratio for norms and biases; E's α and β1 by the paper's batch-size rule) and goes to
the Trainer through ``optimizers=(optimizer, None)``, so the Trainer builds its own lr schedule
around it (``lr_scheduler_type``). The Trainer's checkpoints (``checkpoint-N/optimizer.pt``) hold
``optimizer.state_dict()``, which carries E's buffer (``grad_ema``) with the moments; resuming
loads it back, so a resumed run continues exactly as if it had never stopped.

    python examples/hf_trainer.py --out runs/hf-trainer
    python examples/hf_trainer.py --out runs/hf-resumed --resume runs/hf-trainer/checkpoint-24

Offline: the model is built from a config, the data is generated. Runs in seconds on one thread.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    Trainer,
    TrainingArguments,
)

from valleys import create_optimizer

VOCAB = 32
LENGTH = 16
MARKER = 7
"""A sequence is labelled 1 when it holds this token: a task the model learns in a few steps."""


class MarkerDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences labelled by whether they contain :data:`MARKER`."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(1, VOCAB, (size, LENGTH), generator=generator)
        # About half of the sequences get the marker, so the classes are balanced.
        self.tokens[: size // 2, 0] = MARKER
        self.tokens = self.tokens[torch.randperm(size, generator=generator)]
        self.labels = (self.tokens == MARKER).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index], "labels": self.labels[index]}


def build_model(seed: int) -> BertForSequenceClassification:
    """A two-layer BERT of 20 k parameters, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def build_trainer(
    out: Path, *, steps: int = 48, save_steps: int = 24, batch_size: int = 32, seed: int = 0
) -> Trainer:
    """A Trainer of ALTO on the marker task: ``steps`` steps, a checkpoint every ``save_steps``."""
    model = build_model(seed)
    # Small batch: create_optimizer picks the paper's α = 0.5, β1 = 0.01 for it.
    optimizer = create_optimizer("alto", model, lr=1e-1, batch_size=batch_size, weight_decay=0.01)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        # ALTO clips the global gradient norm itself (max_grad_norm=1.0), before E; the Trainer
        # clipping again would only cost a second pass over the gradients.
        max_grad_norm=0.0,
        save_strategy="steps",
        save_steps=save_steps,
        logging_steps=save_steps,
        seed=seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=MarkerDataset(512, seed),
        eval_dataset=MarkerDataset(256, seed + 1),
        # None: the Trainer builds the schedule of lr_scheduler_type around this optimizer.
        optimizers=(optimizer, None),
        compute_metrics=_accuracy,
    )


def _accuracy(prediction: EvalPrediction) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train (or resume) and evaluate; return the evaluation metrics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hf-trainer"))
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--save-steps", type=int, default=24)
    parser.add_argument("--resume", help="a checkpoint-N folder to continue from")
    args = parser.parse_args(argv)
    trainer = build_trainer(args.out, steps=args.steps, save_steps=args.save_steps)
    trainer.train(resume_from_checkpoint=args.resume)
    metrics = trainer.evaluate()
    print(f"step {trainer.state.global_step}: eval accuracy {metrics['eval_accuracy']:.3f}")
    return metrics


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
