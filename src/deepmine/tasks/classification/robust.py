"""A classifier's adversarial robustness, as a mixin of `ClassificationTask` (attacks in
`deepmine.tasks.classification.attacks`), all off by default:

- `robustness` (conf/robustness/): after the test epoch, the first `max_samples` test samples
  are attacked at each ε and `robust/<attack>/acc_eps<ε>` is logged (MLflow refuses `@` in
  metric names); `plots` adds the accuracy-vs-ε curve and a grid of adversarial examples.
- `adversarial` (pgd | fgsm_rs): each training batch is replaced by its adversarial version
  before the loss (PGD-AT, Madry et al. 2018; FGSM with random start, Wong, Rice & Kolter 2020).
  With it off, the training step is the base's, unchanged.
- `val_attack` (fgsm | pgd): each validation epoch also attacks the first `val_attack_samples`
  validation samples and logs their accuracy as `val/robust_acc`, a metric `task.monitor` may
  name (checkpointing, early stopping, `val/robust_acc_best` and sweeps then follow it).

Under DDP each rank attacks samples of its own shard only. The evaluation shards of
`TensorBatches` are strided (rank r holds samples r, r + W, r + 2W, ... of the split, each
sample once, no padding), so "the first n samples of the split" are each rank's first
`len(range(r, n, W))` samples of its shard, and a sample's split index is known on its rank.
Correct predictions and sample counts are summed over the ranks before dividing (torchmetrics
for `val/robust_acc`, one all-gather for `robust/*`), and random starts are drawn per sample
from its split index (`SampleNoise`): a DDP run reports the accuracies a single process gets
on the same samples.

The attacks work on [0, 1] pixels and need the datamodule's batch normalization: the batches
arrive normalized, so they are mapped back to pixels and forward again through the
`transform` (a `Normalize`) and `pixel_max` of `self.trainer.datamodule`, read at each use.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from deepmine.errors import DeepmineError

ADVERSARIAL = ("pgd", "fgsm_rs")
ROBUSTNESS_DEFAULTS = {
    "eps": [0.0, 0.05, 0.1, 0.2],
    "attacks": ["fgsm", "pgd"],
    "pgd_steps": 10,
    "pgd_step_size": 0.25,
    "random_start": True,
    "restarts": 1,
    "max_samples": 1000,
    "seed": 0,
}


class AdversarialRobustness:
    """Adversarial training, robust validation and the robust evaluation after the test, for a
    classifier (`ClassificationTask`); the hooks below wrap the task's own and call them."""

    def _init_robustness(
        self,
        num_classes: int,
        monitor: str,
        robustness: dict | None,
        adversarial: str | None,
        adversarial_eps: float,
        adversarial_steps: int,
        adversarial_step_size: float | None,
        val_attack: str | None,
        val_attack_eps: float,
        val_attack_steps: int,
        val_attack_step_size: float | None,
        val_attack_samples: int,
        input_shape: list[int] | None,
    ) -> None:
        self.robustness = _robustness_settings(robustness)
        if adversarial is not None and adversarial not in ADVERSARIAL:
            raise DeepmineError(
                f"task.adversarial={adversarial} is not one of {', '.join(ADVERSARIAL)}",
                "use task.adversarial=pgd|fgsm_rs, or null for natural training",
            )
        self.adversarial = adversarial
        self.adversarial_eps = float(adversarial_eps)
        self.adversarial_steps = int(adversarial_steps)
        self.adversarial_step_size = adversarial_step_size
        self._attack_kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.robust_results: dict | None = None
        self.val_attack = _checked_val_attack(
            val_attack, monitor, val_attack_steps, val_attack_samples
        )
        self.val_attack_eps = float(val_attack_eps)
        self.val_attack_steps = int(val_attack_steps)
        self.val_attack_step_size = val_attack_step_size
        self.val_attack_samples = int(val_attack_samples)
        # sum of correct / sum of attacked over the epoch, synced over DDP ranks by torchmetrics
        self.val_robust_acc = (
            MulticlassAccuracy(num_classes, average="micro") if val_attack is not None else None
        )
        self._val_position = 0  # samples of this rank's validation shard seen this epoch
        _check_images(
            input_shape, robustness=robustness, adversarial=adversarial, val_attack=val_attack
        )

    def pixel_model(self):
        """The net seen from [0, 1] pixels, with the datamodule's batch normalization."""
        from deepmine.tasks.classification.attacks import PixelModel

        datamodule = getattr(self.trainer, "datamodule", None)
        transform = getattr(datamodule, "transform", None)
        pixel_max = getattr(datamodule, "pixel_max", None)
        if transform is None or pixel_max is None:
            raise DeepmineError(
                "adversarial attacks need image data with a pixel scale (data.pixel_max and a "
                "batch normalization)",
                "use image data (digits, fashion_mnist) or drop robustness, task.adversarial and "
                "task.val_attack",
            )
        return PixelModel(self.net, transform, pixel_max)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.adversarial is not None:
            batch = self.adversarial_batch(batch)
        return super().training_step(batch, batch_idx)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.val_robust_acc is not None:  # the sanity check's batches do not count
            self.val_robust_acc.reset()

    def on_validation_epoch_start(self) -> None:
        self._val_position = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.val_attack is None:
            return
        x, y = batch
        start = self._val_position
        self._val_position += len(y)
        take = min(len(y), max(0, self._rank_share(self.val_attack_samples) - start))
        if take:
            from deepmine.tasks.classification.attacks import SampleNoise

            eps, relative = self.val_attack_eps, self.val_attack_step_size
            model = self.pixel_model()
            predicted, _ = self._attacked(
                model,
                model.to_pixels(x[:take]),
                y[:take],
                self.val_attack,
                eps,
                steps=self.val_attack_steps,
                step_size=None if relative is None else float(relative) * eps,
                # fixed per sample: every epoch attacks from the same starts
                generator=SampleNoise(0, self._split_index(start, take)),
            )
            self.val_robust_acc.update(predicted, y[:take])
        # logged by every rank at every step, attacked or not: Lightning computes (and so
        # syncs) at the epoch end only the metrics a rank logged
        self.log("val/robust_acc", self.val_robust_acc, on_step=False, on_epoch=True, prog_bar=True)

    def _rank_share(self, first: int) -> int:
        """How many of the split's `first` samples lie in this rank's evaluation shard (all of
        them in a single process): they are its shard's first ones."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return len(range(rank, int(first), world))

    def _split_index(self, start: int, count: int) -> torch.Tensor:
        """The split indices of this rank's shard samples `start .. start + count - 1`."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return rank + world * torch.arange(start, start + count)

    def _attacked(self, model, pixels, y, name: str, eps: float, **options):
        """The net's predictions on the adversarial versions of `pixels`, and those."""
        from deepmine.tasks.classification.attacks import attack, eval_mode

        adversarial = attack(name, model, pixels, y, eps, **options)
        with eval_mode(self.net), torch.no_grad():
            return model(adversarial).argmax(1), adversarial

    def adversarial_batch(self, batch):
        """The batch replaced by adversarial examples of the net as it is now (net in eval
        mode while attacked, its training flags restored after)."""
        from deepmine.tasks.classification.attacks import eval_mode, fgsm, pgd

        x, y = batch
        model = self.pixel_model()
        pixels, eps = model.to_pixels(x), self.adversarial_eps
        relative = self.adversarial_step_size
        with eval_mode(self.net):
            if self.adversarial == "fgsm_rs":
                step = (1.25 if relative is None else float(relative)) * eps
                adversarial = fgsm(model, pixels, y, eps, random_start=True, step_size=step)
            else:
                step = None if relative is None else float(relative) * eps
                adversarial = pgd(model, pixels, y, eps, self.adversarial_steps, step)
        return model.to_input(adversarial), y

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if self.robustness:
            kept = sum(len(y) for _, y in self._attack_kept)
            room = self._rank_share(self.robustness["max_samples"]) - kept
            if room > 0:
                x, y = batch
                self._attack_kept.append((x[:room].detach(), y[:room].detach()))

    def _robust_evaluation(self) -> None:
        """Attack the kept test samples at each ε; log the accuracies of all ranks' samples."""
        from deepmine.tasks.classification.attacks import SampleNoise, attack_context, eval_mode

        settings = self.robustness
        kept, self._attack_kept = self._attack_kept, []
        model = self.pixel_model()
        attacks, eps_list = list(settings["attacks"]), [float(e) for e in settings["eps"]]
        correct = torch.zeros(len(attacks), len(eps_list), dtype=torch.long, device=self.device)
        examples = None
        if kept:
            with attack_context():  # the kept batches are inference tensors: clone them outside
                x = torch.cat([x.clone() for x, _ in kept])
                y = torch.cat([y.clone() for _, y in kept])
            pixels = model.to_pixels(x)
            noise = SampleNoise(int(settings["seed"]), self._split_index(0, len(y)))
            with eval_mode(self.net), torch.no_grad():
                clean = model(pixels[:8]).argmax(1).cpu()
            for i, name in enumerate(attacks):
                for j, eps in enumerate(eps_list):
                    predicted, adversarial = self._attacked(
                        model,
                        pixels,
                        y,
                        name,
                        eps,
                        steps=int(settings["pgd_steps"]),
                        step_size=float(settings["pgd_step_size"]) * eps,
                        random_start=bool(settings["random_start"]),
                        restarts=int(settings["restarts"]),
                        generator=noise,
                    )
                    correct[i, j] = (predicted == y).sum()
                    if eps == max(eps_list):  # the last attack's examples at the largest ε
                        examples = {
                            "clean": pixels[:8].detach().cpu(),
                            "adversarial": adversarial[:8].detach().cpu(),
                            "target": y[:8].cpu(),
                            "clean_pred": clean,
                            "adversarial_pred": predicted[:8].cpu(),
                            "attack": name,
                            "eps": eps,
                        }
        # every rank reaches this gather (one with no samples adds zeros): sums of correct
        # predictions and of samples, never a mean of the ranks' accuracies
        counts = torch.cat([correct.flatten(), correct.new_tensor([sum(len(y) for _, y in kept)])])
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        counts = counts.cpu()
        total = int(counts[-1])
        if total == 0:
            return
        correct = counts[:-1].view(len(attacks), len(eps_list))
        accuracy = {
            name: [int(c) / total for c in correct[i].tolist()] for i, name in enumerate(attacks)
        }
        for name, values in accuracy.items():
            for eps, acc in zip(eps_list, values, strict=True):
                self.log(f"robust/{name}/acc_eps{eps:g}", acc)
        self.robust_results = {
            "eps": eps_list,
            "accuracy": accuracy,
            "examples": examples,  # this rank's first samples (rank zero's are plotted)
            "samples": total,
        }


def _checked_val_attack(val_attack, monitor: str, steps, samples) -> str | None:
    """The robust validation attack, refused in one line (before any run opens) when unknown,
    when its counts are not positive, or when `task.monitor=robust_acc` has none."""
    from deepmine.tasks.classification.attacks import ATTACKS

    if val_attack is not None and val_attack not in ATTACKS:
        raise DeepmineError(
            f"task.val_attack={val_attack} is not one of {', '.join(ATTACKS)}",
            "use task.val_attack=fgsm|pgd, or null for no robust validation",
        )
    if val_attack is None and monitor == "robust_acc":
        raise DeepmineError(
            "task.monitor=robust_acc needs a robust validation attack (task.val_attack is null)",
            "add task.val_attack=pgd (or fgsm), or monitor task.monitor=acc",
        )
    for key, value in (("val_attack_steps", steps), ("val_attack_samples", samples)):
        if val_attack is not None and int(value) < 1:
            raise DeepmineError(
                f"task.{key}={value} is not valid: it must be at least 1",
                f"set it to such a value, e.g. task.{key}=10",
            )
    return val_attack


def _check_images(input_shape, **features) -> None:
    """The attacks need images (samples of shape (C, H, W), with a pixel scale): refuse an
    attack option on other data before any run opens. `input_shape` is the data's, by
    interpolation (None: not known, e.g. a recorded config older than the key)."""
    used = [key for key, value in features.items() if value]
    if not used or input_shape is None or len(input_shape) == 3:
        return
    option = "robustness" if used[0] == "robustness" else f"task.{used[0]}"
    raise DeepmineError(
        f"{option} attacks images, but this data's samples have shape {list(input_shape)}",
        f"use image data (data=digits, fashion_mnist or image_folder), or drop {option}",
    )


def _robustness_settings(robustness) -> dict | None:
    """The robustness evaluation settings over their defaults; None/empty: off."""
    if not robustness:
        return None
    settings = {**ROBUSTNESS_DEFAULTS, **dict(robustness)}
    from deepmine.tasks.classification.attacks import ATTACKS

    unknown = [name for name in settings["attacks"] if name not in ATTACKS]
    if unknown or set(settings) - set(ROBUSTNESS_DEFAULTS):
        raise DeepmineError(
            f"robustness: unknown attack(s) {unknown} or key(s) "
            f"{sorted(set(settings) - set(ROBUSTNESS_DEFAULTS))}",
            f"attacks are {', '.join(ATTACKS)}; keys are {', '.join(ROBUSTNESS_DEFAULTS)}",
        )
    settings["eps"] = [float(e) for e in settings["eps"]]
    settings["attacks"] = list(settings["attacks"])
    return settings
