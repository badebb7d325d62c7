"""What each `reslab` command does, as a plain function of its parsed options (`COMMANDS`), and how
a `--config` file's options meet the flags. `reslab.cli` parses and dispatches to these; the heavy
imports (torch, a study's plots) happen inside the command that needs them.
"""

from __future__ import annotations

import dataclasses
import json

from reslab import studies
from reslab.options import check_options, read_config_file
from reslab.studies import base
from reslab.training.config import TrainConfig
from reslab.training.presets import PRESETS


def cmd_models(opts: dict) -> int:
    """`reslab models [PATTERN] [--json]`: the table of registered models, read from the table stored
    with the models (nothing is built)."""
    from reslab.models.flops import stored_table
    from reslab.models.registry import FAMILIES, list_models

    names = list_models(opts["pattern"])
    if not names:
        raise ValueError(
            f"no model matches {opts['pattern']!r}; try `reslab models` for the full list"
        )
    order = [f.name for f in FAMILIES]
    rows = sorted(
        (r for r in stored_table() if r["name"] in names),
        key=lambda r: (order.index(r["family"]), not r["residual"], r["depth"]),
    )
    if opts.get("json"):
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<20}{'family':<10}{'depth':>6}{'params':>14}{'MACs':>17}  input")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        print(
            f"{r['name']:<20}{r['family']:<10}{r['depth']:>6}{r['params']:>14,}{r['macs']:>17,}  {size}"
        )
    print(
        "any depth by name: resnet-N / plain-N (6n+2; 9n+2 bottlenecks from 164), preact_resnet-N, resmlp-N (even N >= 2), ..."
    )
    return 0


def with_config_file(opts: dict, study: base.Study | None = None) -> dict:
    """`opts` over the options of its `--config` file (those of `train`, or of `study`: its own, the
    engine's it does not set itself, and `train`, a mapping of engine options); model_kwargs and the
    like merge key by key."""
    if "config" not in opts:
        return opts
    path = opts.pop("config")
    values = read_config_file(path)
    origin = f"--config {path}"
    if study is None:
        values = _engine_options(values, origin)
    else:
        own = [f.name for f in dataclasses.fields(study.config)]
        engine = [f.name for f in dataclasses.fields(TrainConfig)]
        engine = [k for k in engine if k not in base.OWNED + study.owns]
        train = _engine_options(values.pop("train", {}), f"{origin} (train)")
        values = {
            **check_options({k: v for k, v in values.items() if k in own}, study.config, origin),
            **check_options(
                {k: v for k, v in values.items() if k not in own}, TrainConfig, origin, engine
            ),
        }
        if train:
            values["train"] = train
    merged = dict(values)
    for key, value in opts.items():  # the flags win; a mapping (--model-arg) merges key by key
        old = merged.get(key)
        merged[key] = (
            {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
        )
    return merged


def _engine_options(values: object, origin: str) -> dict:
    """TrainConfig options and a `preset` from a config file, checked."""
    if not isinstance(values, dict):
        raise ValueError(f"{origin} should be a mapping of options, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    preset = values.pop("preset", None)
    values = check_options(values, TrainConfig, origin)
    if preset is not None:
        if preset not in PRESETS:
            choices = ", ".join(PRESETS)
            raise ValueError(f"{origin}: unknown preset {preset!r}; choose from {choices}")
        values["preset"] = preset
    return values


def study_config(cfg) -> dict:
    """What `reslab STUDY --print-config` prints: the study's settings, with `train` its runs'
    whole engine recipe (less what each cell sets from the study: model, seed, name, data, ...)."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    per_cell = (*base.PER_RUN, "data", "data_dir")
    out["train"] = {k: v for k, v in base.engine_recipe(cfg).items() if k not in per_cell}
    return out


def cmd_train(opts: dict) -> int:
    """`reslab train`: one training run from a preset and options."""
    from reslab.training import resolve, train

    print_config = opts.pop("print_config", False)
    cfg = resolve(opts.pop("preset", None), **opts)
    if print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    s = train(cfg)
    print(
        f"{s['name']}: {s['steps']} steps, train error {s['final_train_error']:.2%}, "
        f"test error {s['final_test_error']:.2%} (top-5 {s['final_test_top5_error']:.2%})"
        + (f", peak memory {s['peak_memory_gib']:.2f} GiB" if s.get("peak_memory_gib") else "")
        + f" -> {cfg.out}/{cfg.run_name}"
    )
    return 0


def cmd_eval(opts: dict) -> int:
    """`reslab eval [RUN]`: loss and errors of a run or a weights file on a dataset split."""
    from reslab.training.trained import evaluate_weights

    r = evaluate_weights(**opts)
    print(
        f"{r['model']} on {r['data']} {opts['split']} ({r['n']} images, {r['normalization']} "
        f"normalisation): loss {r['loss']:.4f}, top-1 error {r['error']:.2%}, "
        f"top-5 error {r['top5_error']:.2%} [{r['precision']['amp']}]"
    )
    return 0


def cmd_export(opts: dict) -> int:
    """`reslab export`: a model (and its weights) as an ONNX or torch.export file."""
    from reslab.export import export_model

    size = opts.pop("img_size")
    if size is not None and len(size) not in (1, 2):
        raise ValueError(f"--img-size takes N or H W, got {len(size)} values")
    path = export_model(
        opts.pop("model"),
        opts.pop("out"),
        opts.pop("format"),
        img_size=None if size is None else tuple(size) if len(size) == 2 else size[0],
        **opts.pop("model_kwargs", {}),
        **opts,
    )
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_info(opts: dict) -> int:
    """`reslab info`: machine, precision choice and measured speed."""
    from reslab.info import format_info, info

    as_json = opts.pop("json")
    r = info(**opts)
    print(json.dumps(r, indent=2) if as_json else format_info(r))
    return 0


def cmd_report(opts: dict) -> int:
    """`reslab report PATH [--results FILE]`: rebuild a study's figures and report from its folder,
    and with --results the Markdown page of every study's results."""
    print(studies.build_report(opts["path"]))
    if opts.get("results"):
        from reslab.studies.results import write_results

        print(write_results(opts["path"], opts["results"]))
    return 0


COMMANDS = {
    "models": cmd_models,
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
    "info": cmd_info,
    "report": cmd_report,
}
