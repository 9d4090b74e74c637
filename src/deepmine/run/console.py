"""What a run prints: the resolved config as a tree before training, and the result at the end
with where to find it (run id, model, store, the UI's links)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(f"[bold]{key}[/]").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    Console(stderr=True).print(tree)


def print_summary(result: dict, task, run, store) -> None:
    lines = task.summary_lines(result["metrics"])
    if run is not None:
        lines.insert(0, f"MLflow run    {run.run_id} (experiment '{run.experiment_name}')")
        model = result.get("model")
        if model is not None:
            registered = ""
            if model.registered:
                name, version = model.registered.rsplit("/", 1)
                registered = f" (registered as '{name}' version {version})"
            lines.append(f"model         {model.uri}{registered}")
        lines.append(f"store         {store.uri}")
        if store.uri.startswith(("http://", "https://")):
            base = store.uri.rstrip("/")
            lines.append(f"open the runs {base}/{run.experiment_ui_path()}")
            lines.append(f"open the run  {base}/{run.ui_path()}")
        else:
            lines.append(
                f"open the UI   deepmine ui   (or: mlflow ui --backend-store-uri {store.uri})"
            )
            lines.append(f"then the runs http://127.0.0.1:5000/{run.experiment_ui_path()}")
            lines.append(f"and this run  http://127.0.0.1:5000/{run.ui_path()}")
    print("\n".join(lines), flush=True)
