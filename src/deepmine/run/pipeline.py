"""A trained model as a whole pipeline: the datamodule's fitted preprocessing (its codec), the
task module with the best weights, and the task's outputs named in the user's terms.

This is what a run logs as its MLflow model (`deepmine.tracking.model`): `predict(raw)` takes
what a user has and answers as a data miner reads it:

- classification (table rows, image files or arrays): `predicted` (the class name) and
  `probability_<class>` for every class;
- regression (table rows): `predicted_<target>` in the target's units;
- forecasting (a series: time and input columns): one row per future step, `<time column>`,
  `step` and each target in its units;
- clustering (table rows, images): `cluster` and `distance_<k>` to every centre;
- anomaly (table rows, images): `anomaly_score` and `anomalous` (above the run's threshold).

The pipeline is one object, so MLflow pickles it whole with the model (by reference to
deepmine's classes: loading needs deepmine importable, i.e. the project's environment). It
scores in chunks of `CHUNK` rows, so a large input never passes through the net at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

#: the names a task's `predict_outputs` may use, and what each becomes (see the table above)
OUTPUTS = ("probabilities", "values", "forecast", "cluster", "distances", "score", "anomalous")
#: rows encoded and scored at once
CHUNK = 4096


class Pipeline:
    """`codec` (`deepmine.data.codecs`) + `task` (a task module on the CPU, in eval mode)."""

    def __init__(self, codec, task):
        self.codec = codec
        self.task = task.cpu().eval()

    @property
    def kind(self) -> str:
        return self.codec.kind

    def predict(self, data, on_unseen: str = "zeros", drift=None) -> pd.DataFrame:
        """The predictions for the raw rows (images, series) of `data`, one row per input row
        (a series: one per forecast step). `drift` (`deepmine.data.drift.DriftCounter`) counts
        the input features as the codec reads them, so nothing is read twice for it."""
        if self.codec.kind == "series":
            return self._forecast(data, drift)
        if isinstance(data, dict) or (
            isinstance(data, list) and data and isinstance(data[0], dict)
        ):
            data = pd.DataFrame(data)  # columns, or records: rows to cut into chunks
        parts = [self._frame(self._outputs(x)) for x in self._chunks(data, on_unseen, drift)]
        return pd.concat(parts, ignore_index=True) if parts else self._frame({})

    def _chunks(self, data, on_unseen: str, drift):
        n = len(data)
        if n == 0:
            return
        for start in range(0, n, CHUNK):
            part = data.iloc[start : start + CHUNK] if isinstance(data, pd.DataFrame) else None
            if part is None:
                part = data[start : start + CHUNK]
            yield self.codec.encode(part, on_unseen, drift)

    def _outputs(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outputs = self.task.predict_outputs(x)
        return {name: value.cpu().numpy() for name, value in outputs.items()}

    def _frame(self, outputs: dict[str, np.ndarray]) -> pd.DataFrame:
        columns: dict[str, object] = {}
        if "probabilities" in outputs:
            p = outputs["probabilities"]
            names = list(self.codec.class_names) or [str(k) for k in range(p.shape[1])]
            columns["predicted"] = np.asarray(names, dtype=object)[p.argmax(1)]
            columns |= {f"probability_{name}": p[:, k] for k, name in enumerate(names)}
        if "values" in outputs:
            v = outputs["values"]
            names = list(self.codec.target_names) or [str(k) for k in range(v.shape[1])]
            columns |= {f"predicted_{name}": v[:, k] for k, name in enumerate(names)}
        if "cluster" in outputs:
            columns["cluster"] = outputs["cluster"].astype(np.int64)
            d = outputs["distances"]
            columns |= {f"distance_{k}": d[:, k] for k in range(d.shape[1])}
        if "score" in outputs:
            columns["anomaly_score"] = outputs["score"]
            columns["anomalous"] = outputs["anomalous"].astype(bool)
        return pd.DataFrame(columns)

    def _forecast(self, data, drift) -> pd.DataFrame:
        """The `horizon` steps after the series' last row, each with its time, in the
        targets' units."""
        x = self.codec.encode(data, drift=drift)
        forecast = self._outputs(x)["forecast"][0]  # (horizon, targets)
        columns = {
            self.codec.time_column: self.codec.future_times(data),
            "step": np.arange(1, len(forecast) + 1),
        }
        columns |= {name: forecast[:, k] for k, name in enumerate(self.codec.target_names)}
        return pd.DataFrame(columns)


def build_pipeline(cfg, datamodule, trained_task) -> Pipeline:
    """The pipeline of a finished run: the datamodule's codec and a task module built afresh
    from the config with the trained module's state (best weights, scalers, what the test
    fitted: cluster centres, a threshold), so no trainer, test results or plots' data come
    along."""
    from deepmine.run.build import build_task

    task = build_task(cfg)
    task.load_state_dict(trained_task.state_dict())
    return Pipeline(datamodule.codec(), task)
