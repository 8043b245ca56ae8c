"""``vidray <command>``: the command line, and the shared body of ``python -m pipelines.X``.

Every command reads a YAML config (``--config``), applies ``section.key=value``
overrides, checks what it can without a cluster, then starts or joins Ray and
calls one library function. A `VidrayError` (a user mistake: bad input, config
typo, missing file) is printed as one line without a traceback and the exit
status is 2; a command the user stops (Ctrl-C, SIGTERM) says what it kept and
exits 130; any other exception is a bug and keeps its traceback.

A flag's help (choices, default, meaning) is read from the config key it sets,
so ``--help`` and ``vidray config`` never disagree with the code.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vidray.config import Config, Setting, all_settings, load_config
from vidray.errors import Interrupted, VidrayError, user_error

if TYPE_CHECKING:
    from vidray.tune.space import Sweep


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[Any], int]  # takes what ``load`` returns; returns the exit status
    flags: dict[str, str] = field(default_factory=dict)  # --flag VALUE -> config key
    switches: dict[str, str] = field(default_factory=dict)  # --flag -> config key set true
    needs_ray: bool = True
    load: Callable[[str | None, list[str]], Any] = load_config
    # What can be checked without a cluster, run before Ray starts (20-60 s on a laptop):
    # a mistake then costs the user seconds, not a Ray start-up.
    check: Callable[[Any], object] | None = None


def _ingest(cfg: Config) -> int:
    from vidray.data.ingest import run_ingest

    summary = run_ingest(cfg)
    print(summary.report())
    if summary.ok == 0:
        raise VidrayError(
            f"no video could be ingested from {cfg.ingest.input}: "
            f"see {summary.output}/manifest.parquet for the reasons"
        )
    return 0


def _check_ingest(cfg: Config) -> None:
    from vidray.data.ingest_check import check_ingest

    check_ingest(cfg)


def _register_tasks() -> None:
    """Every training task, so that any ``train.task`` and any checkpoint is known
    (`vidray.train.tasks`: each task's package registers it)."""
    import vidray.detect  # registers train.task=detect
    import vidray.predict  # noqa: F401  (registers the classifier's MLflow model)


def _train(cfg: Config) -> int:
    from vidray.train.driver import run_training

    _register_tasks()
    result = run_training(cfg)
    print(result.report())
    return 0


def _check_training(cfg: Config) -> None:
    from vidray.train.preflight import check_settings

    check_settings(cfg)  # before torch is imported: most mistakes cost no seconds
    from vidray.train.driver import check_training

    _register_tasks()
    check_training(cfg)


def _evaluate(cfg: Config) -> int:
    from vidray.train.evaluate import run_evaluation

    _register_tasks()
    report = run_evaluation(cfg)
    print(report.report())
    return 0


def _detect(cfg: Config) -> int:
    from vidray.detect.infer import run_detect

    report = run_detect(cfg)
    print(report.report())
    return 0


def _predict(cfg: Config) -> int:
    from vidray.predict.job import run_predict

    report = run_predict(cfg)
    print(report.report())
    return 0


def _serve(cfg: Config) -> int:
    from vidray.serve.app import run_serve

    return run_serve(cfg)


def _tune(sweep: Sweep) -> int:
    from vidray.tune.sweep import run_sweep

    result = run_sweep(sweep)
    print(result.report())
    return 0


def _check_sweep(sweep: Sweep) -> None:
    from vidray.tune.sweep import check_sweep

    check_sweep(sweep)


def _load_sweep(path: str | None, overrides: list[str]) -> Sweep:
    from vidray.tune.space import load_sweep

    if not path:
        raise VidrayError("a sweep needs --config FILE (e.g. configs/tune/fusion_sweep_demo.yaml)")
    return load_sweep(path, overrides)


def _demo(cfg: Config) -> int:
    from vidray.demo import run_demo

    _register_tasks()
    return run_demo(cfg)


COMMANDS = {
    c.name: c
    for c in [
        Command(
            "ingest",
            "videos -> Parquet windows with optical flow (Ray Data)",
            _ingest,
            {"--input": "ingest.input", "--layout": "ingest.layout", "--output": "ingest.output"},
            check=_check_ingest,
        ),
        Command(
            "train",
            "train a model on ingested windows (Ray Train)",
            _train,
            {"--data": "train.data"},
            check=_check_training,
        ),
        Command(
            "evaluate",
            "multi-clip evaluation of a checkpoint",
            _evaluate,
            {
                "--checkpoint": "eval.checkpoint",
                "--data": "eval.data",
                "--split": "eval.split",
                "--temporal-views": "eval.temporal_views",
                "--spatial-views": "eval.spatial_views",
                "--output": "eval.output",
            },
            needs_ray=False,
        ),
        Command(
            "detect",
            "person boxes and action scores on a video (a folder: Ray Data) -> AVA CSV",
            _detect,
            {
                "--video": "detect.video",
                "--checkpoint": "detect.checkpoint",
                "--detector": "detect.detector",
                "--proposals": "detect.proposals",
                "--render": "detect.render",
                "--output": "detect.output",
            },
            needs_ray=False,  # a folder starts Ray itself; one video runs in-process
        ),
        Command(
            "predict",
            "a classifier on new videos (a folder, CSV or URI: Ray Data) -> top-k and timeline",
            _predict,
            {
                "--video": "predict.video",
                "--checkpoint": "predict.checkpoint",
                "--output": "predict.output",
                "--top-k": "predict.top_k",
                "--render": "predict.render",
            },
            needs_ray=False,  # a folder starts Ray itself; one video runs in-process
        ),
        Command(
            "serve",
            "a classifier behind HTTP (Ray Serve): POST /predict a video, get top-k JSON",
            _serve,
            {
                "--checkpoint": "serve.checkpoint",
                "--model": "serve.model",
                "--host": "serve.host",
                "--port": "serve.port",
            },
            needs_ray=False,  # serve starts Ray and Serve itself
        ),
        Command(
            "tune",
            "a Ray Tune sweep of training runs (fusion choices, clip parameters)",
            _tune,
            {"--data": "train.data"},
            switches={"--resume": "sweep.resume"},
            load=_load_sweep,
            check=_check_sweep,
        ),
        Command("demo", "synthetic dataset -> ingest -> train -> evaluate", _demo),
    ]
}


def run_command(name: str, argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse ``argv`` for command ``name``, run it, map errors to exit codes."""
    command = COMMANDS[name]
    parser = _command_parser(command, prog or f"vidray {name}")
    args = parser.parse_args(argv)
    with sigterm_as_ctrl_c():
        return _run(command, parser, args)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """A job manager (Ray job stop, Kubernetes, systemd) ends a job with SIGTERM: stop
    as for Ctrl-C, so the command keeps what it finished and says so. The handler a
    caller had (a test runner, a notebook) comes back afterwards; off the main thread,
    where Python allows no handler, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(command: Command, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        keys = [*command.flags.values(), *command.switches.values()]
        overrides = [f"{key}={getattr(args, key)}" for key in keys if getattr(args, key)]
        if args.verbose:
            overrides.append("ray.log_level=info")
        loaded = command.load(args.config, [*args.overrides, *overrides])
        if command.check is not None:
            command.check(loaded)
        if command.needs_ray:
            from vidray.runtime import init_ray

            init_ray(loaded.ray)
        return command.run(loaded)
    except Interrupted as stopped:
        print(f"{parser.prog}: {stopped}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A user's mistake met on a Ray worker (a damaged shard) comes back wrapped
        # in Ray's exception types; `user_error` finds it.
        cause = user_error(exc)
        if cause is None:
            raise
        print(f"{parser.prog}: error: {cause}", file=sys.stderr)
        return 2


def _command_parser(command: Command, prog: str) -> argparse.ArgumentParser:
    """The command's flags, each documented by the config key it sets."""
    keys = [*command.flags.values(), *command.switches.values()]
    # The sweep section lives beside the zoo (torch): import it only for flags that need it.
    sweep = _sweep_settings() if any(k.startswith("sweep.") for k in keys) else []
    documented = {s.key: s for s in [*all_settings(), *sweep]}
    parser = argparse.ArgumentParser(
        prog=prog,
        description=command.help,
        epilog="Every other setting is a section.key=value argument (e.g. optim.lr=0.01); "
        "`vidray config [SECTION]` lists them with their defaults.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (configs/...)")
    for flag, key in command.flags.items():
        setting = documented[key]
        parser.add_argument(
            flag,
            dest=key,
            # With choices, argparse shows them ({folders,flat,...}) in place of a name.
            metavar=None if setting.choices else key.split(".")[-1].upper(),
            choices=setting.choices,
            help=_flag_help(setting),
        )
    for flag, key in command.switches.items():
        parser.add_argument(
            flag, dest=key, action="store_true", help=f"{documented[key].comment} (sets {key}=true)"
        )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own INFO logs and worker notes too (sets ray.log_level=info)",
    )
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser


def _flag_help(setting: Setting) -> str:
    default = "" if setting.default in ("", None) else f"; default {_yaml(setting.default)}"
    meaning = f"{setting.comment} " if setting.comment else ""
    return f"{meaning}(sets {setting.key}{default})"


def _yaml(value: Any) -> str:
    """A value as it is written in a config file or a key=value override."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _sweep_settings() -> list[Setting]:
    from vidray.config import settings
    from vidray.tune.space import SweepConfig

    return settings("sweep", SweepConfig)


def _config(argv: Sequence[str]) -> int:
    """``vidray config``: every key with its value (the default, or a config file's)."""
    every = [*all_settings(), *_sweep_settings()]
    sections = list(dict.fromkeys(s.key.split(".")[0] for s in every))
    parser = argparse.ArgumentParser(
        prog="vidray config",
        description="every setting with its value and meaning; set one with section.key=value",
    )
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=", ".join(sections))
    parser.add_argument("--config", metavar="FILE", help="show this config file's values")
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in sections]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sections, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(
            f"vidray config: error: no section '{unknown[0]}'{hint}; sections: "
            + ", ".join(sections),
            file=sys.stderr,
        )
        return 2
    try:
        values = load_config(args.config).flat() if args.config else {}
    except VidrayError as exc:
        print(f"vidray config: error: {exc}", file=sys.stderr)
        return 2
    shown = [s for s in every if not args.sections or s.key.split(".")[0] in args.sections]
    for section in dict.fromkeys(s.key.split(".")[0] for s in shown):
        print(f"{section}:")
        for s in (s for s in shown if s.key.startswith(f"{section}.")):
            meaning = f"; {s.comment}" if s.comment else ""
            name = s.key.split(".", 1)[1]
            print(f"  {name}: {_yaml(values.get(s.key, s.default))}  # {s.kind}{meaning}")
    return 0


def _synth(argv: Sequence[str]) -> int:
    from vidray.data.synthetic import MOTIONS, write_motion_dataset

    parser = argparse.ArgumentParser(
        prog="vidray synth",
        description="write a synthetic dataset: motion classes (folders layout) or AVA-like "
        "detection data (ava layout)",
    )
    parser.add_argument("--output", required=True, help="dataset root")
    parser.add_argument("--task", choices=("classify", "ava"), default="classify")
    parser.add_argument("--classes", type=int, default=4, help=f"classify: 1..{len(MOTIONS)}")
    parser.add_argument("--videos-per-class", type=int, default=8, help="classify")
    parser.add_argument("--videos", type=int, default=8, help="ava: videos (a quarter are val)")
    parser.add_argument("--seconds", type=int, default=10, help="ava: length of each video")
    parser.add_argument("--frames", type=int, default=48, help="classify: frames per video")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", default="96x72", help="WIDTHxHEIGHT (ava default 160x120)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        if args.task == "ava":
            from vidray.data.synthetic_ava import write_ava_dataset

            size = (width, height) if "--size" in argv else (160, 120)
            dataset = write_ava_dataset(
                args.output,
                num_videos=args.videos,
                val_videos=max(1, args.videos // 4),
                duration_sec=args.seconds,
                fps=int(args.fps),
                size=size,
                seed=args.seed,
            )
            count = len(dataset.videos)
        else:
            count = len(
                write_motion_dataset(
                    args.output,
                    classes=args.classes,
                    videos_per_class=args.videos_per_class,
                    num_frames=args.frames,
                    fps=args.fps,
                    size=(width, height),
                    seed=args.seed,
                )
            )
    except (ValueError, VidrayError) as exc:
        print(f"vidray synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"vidray synth: wrote {count} videos under {args.output}")
    return 0


def _models(argv: Sequence[str]) -> int:
    from vidray.models.summary import format_table, model_rows

    parser = argparse.ArgumentParser(
        prog="vidray models", description="the model zoo: params and GMACs at each default input"
    )
    parser.add_argument("--num-classes", type=int, default=400)
    args = parser.parse_args(argv)
    print(format_table(model_rows(args.num_classes)))
    return 0


def _ava_map(argv: Sequence[str]) -> int:
    """``vidray ava-map``: ActivityNet's AVA frame-mAP of a detections CSV
    (`vidray.detect.frame_map`, the implementation training's val/frame_map uses)."""
    parser = argparse.ArgumentParser(
        prog="vidray ava-map",
        description="frame-mAP at IoU 0.5 of AVA detections, as ActivityNet's "
        "get_ava_performance.py scores them (same inputs)",
    )
    parser.add_argument("-l", "--labelmap", required=True, metavar="PBTXT", help="classes scored")
    parser.add_argument("-g", "--groundtruth", required=True, metavar="CSV", help="ground truth")
    parser.add_argument("-d", "--detections", required=True, metavar="CSV", help="scored boxes")
    parser.add_argument("-e", "--exclusions", metavar="CSV", help="keyframes left out")
    parser.add_argument("--json", metavar="OUT", help='write {"mAP": ..., "per_class": {id: AP}}')
    args = parser.parse_args(argv)
    try:
        from vidray.detect.frame_map import frame_map_of_files

        result, classes = frame_map_of_files(
            args.labelmap, args.groundtruth, args.detections, args.exclusions
        )
        if args.json:
            _write_json(args.json, {"mAP": result.mean_ap, "per_class": result.per_class})
    except VidrayError as exc:
        print(f"vidray ava-map: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"frame-mAP@{result.iou_threshold}IOU: {result.mean_ap:.6f} (mean AP of the "
        f"{len(result.per_class)} classes with ground truth; {len(classes)} in the label map)"
    )
    for action_id in classes.ids:
        ap = result.per_class.get(action_id)
        name = classes.name(action_id)
        if ap is None:
            print(f"  {action_id:>4}  {'-':>8}  {name} (no ground truth: not averaged)")
        else:
            print(f"  {action_id:>4}  {ap:8.6f}  {name}")
    return 0


def _write_json(path: str, content: dict[str, Any]) -> None:
    import json
    from pathlib import Path

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(content, indent=2) + "\n")
    except OSError as exc:
        raise VidrayError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidray")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


TOOLS = {
    "synth": ("write a synthetic dataset (motion classes, or --task ava)", _synth),
    "models": ("the model zoo: params, GMACs and input of every family", _models),
    "config": ("every setting with its default and meaning (vidray config [SECTION])", _config),
    "ava-map": ("AVA frame-mAP of a detections CSV, as ActivityNet scores it", _ava_map),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [*COMMANDS, *TOOLS]
    usage = [f"usage: vidray {{{','.join(names)}}} [--config FILE] [section.key=value ...]"]
    usage += [f"  {c.name:<9} {c.help}" for c in COMMANDS.values()]
    usage += [f"  {name:<9} {text}" for name, (text, _) in TOOLS.items()]
    usage += ["`vidray COMMAND --help` shows a command's flags; `vidray --version` the version."]
    if not argv or argv[0] in ("-h", "--help"):
        print("\n".join(usage))
        return 0
    if argv[0] == "--version":
        print(f"vidray {_version()}")
        return 0
    if argv[0] in TOOLS:
        return TOOLS[argv[0]][1](argv[1:])
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"vidray: error: unknown command '{argv[0]}'{hint}", file=sys.stderr)
        print("\n".join(usage), file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
