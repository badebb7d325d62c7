"""Optional experiment trackers, MLflow and Weights & Biases, beside a run folder's own logs.

`--log-to mlflow` (`pip install 'reslab[mlflow]'`), `--log-to wandb` (`'reslab[wandb]'`) or both
(`mlflow,wandb`) send a run's config as parameters, every line of metrics.jsonl as metrics at its step
under the names TensorBoard shows ("train/train_loss", "eval/test_error", "final/test_error"), the
summary, and the weights file as an artifact, as Lightning's MLFlowLogger and WandbLogger do. A library
is imported only when a run asks for it, and only the logging process (rank 0) opens a tracker run.
Where it logs is the library's own business, set by its own environment variables: MLFLOW_TRACKING_URI
and MLFLOW_EXPERIMENT_NAME (default: MLflow's ./mlflow.db, experiment "reslab"); WANDB_MODE,
WANDB_PROJECT (default "reslab"), WANDB_ENTITY, WANDB_DIR. A resumed run opens a new tracker run,
which logs from the checkpoint's step on.

This module imports neither torch nor a tracker at import time: the config checks names against it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from reslab.training import runs

# --log-to's names: the module each imports and the extra that installs it
TRACKERS = {"mlflow": "MLflow", "wandb": "Weights & Biases"}
DEFAULT_PROJECT = "reslab"  # MLflow's experiment and W&B's project when their variables are unset


def parse(log_to: str) -> tuple[str, ...]:
    """The tracker names of a `log_to` value ("", "mlflow", "wandb", "mlflow,wandb"); a one-line
    ValueError for any other name."""
    names = tuple(dict.fromkeys(n.strip() for n in log_to.split(",") if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(
            f"log_to takes {', '.join(TRACKERS)} or several as mlflow,wandb; got {log_to!r}"
        )
    return names


def check_installed(log_to: str) -> None:
    """A one-line ValueError naming the pip command unless every tracker `log_to` asks for is
    installed (checked before a run starts, without importing it)."""
    for name in parse(log_to):
        if importlib.util.find_spec(name) is None:
            raise ValueError(
                f"--log-to {name} needs {TRACKERS[name]}, which is not installed: "
                f"pip install 'reslab[{name}]' (in a checkout: pip install -e '.[{name}]')"
            )


def open_trackers(log_to: str, run_dir: Path, config: dict) -> list[Tracker]:
    """One open tracker run per name in `log_to`, named as the run folder, holding `config`."""
    opened: list[Tracker] = []
    try:
        for name in parse(log_to):
            opened.append(_MLflow(run_dir, config) if name == "mlflow" else _Wandb(run_dir, config))
    except BaseException as err:
        for tracker in opened:
            tracker.finish(run_dir, err)
        raise
    return opened


class Tracker:
    """An open tracker run: `log` a metrics line, `finish` with the run's files or its error."""

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, run_dir: Path, error: BaseException | None = None) -> None:
        raise NotImplementedError


class _MLflow(Tracker):
    """A run of MlflowClient, not of mlflow's fluent API: it leaves a run the caller has active
    (`mlflow.start_run()` in a notebook) alone, and a study's runs in one process apart."""

    def __init__(self, run_dir: Path, config: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, else MLflow's default
        experiment = os.environ.get("MLFLOW_EXPERIMENT_ID") or self._experiment(
            os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        )
        tags = {"reslab.run_dir": str(run_dir.resolve())}
        run = self.client.create_run(experiment, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flat_config(config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process created it first (a study's workers)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = _millis()
        metrics = [Metric(f"{kind}/{k}", float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: Path, error: BaseException | None = None) -> None:
        if error is None:
            for name in (runs.SUMMARY, runs.WEIGHTS):
                if (run_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
        status = "FINISHED" if error is None else "FAILED"
        if isinstance(error, KeyboardInterrupt):
            status = "KILLED"
        self.client.set_terminated(self.run_id, status)


class _Wandb(Tracker):
    """A W&B run of its own (`reinit="create_new"`): one beside any the caller has open."""

    def __init__(self, run_dir: Path, config: dict):
        import wandb

        self.wandb = wandb
        project = None if os.environ.get("WANDB_PROJECT") else DEFAULT_PROJECT
        self.run = wandb.init(
            project=project,
            name=run_dir.name,
            config=flat_config(config),
            reinit="create_new",
            notes=str(run_dir.resolve()),
        )

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        # lines of one step (the train line and a curve point) merge into one history row
        self.run.log({f"{kind}/{k}": v for k, v in values.items()}, step=step)

    def finish(self, run_dir: Path, error: BaseException | None = None) -> None:
        if error is None:
            summary = runs.read_summary(run_dir) or {}
            self.run.summary.update(
                {k: v for k, v in summary.items() if isinstance(v, (bool, int, float, str))}
            )
            if (run_dir / runs.WEIGHTS).exists():
                artifact = self.wandb.Artifact(_artifact_name(run_dir.name), type="model")
                artifact.add_file(str(run_dir / runs.WEIGHTS))
                self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if error is None else 1)


def finish_all(trackers: list[Tracker], run_dir: Path, error: BaseException | None) -> None:
    """Close every tracker run. After an error a tracker that fails to close warns in one line, so
    that the run's own error is the one raised."""
    for tracker in trackers:
        if error is None:
            tracker.finish(run_dir)
            continue
        try:
            tracker.finish(run_dir, error)
        except Exception as err:  # the run's error matters more than the tracker's
            warnings.warn(
                f"{type(tracker).__name__[1:]} could not close its run: {err}", stacklevel=2
            )


def flat_config(config: dict) -> dict[str, Any]:
    """A run config as trackers and TensorBoard's hparams take it: plain values as they are,
    lists and mappings as JSON, None left out."""
    plain = (bool, int, float, str)
    return {
        k: v if isinstance(v, plain) else json.dumps(v) for k, v in config.items() if v is not None
    }


def _artifact_name(run_name: str) -> str:
    """A W&B artifact name from a run name (letters, digits, '-', '_' and '.' only)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_name) + "-model"


def _millis() -> int:
    return int(time.time() * 1000)
