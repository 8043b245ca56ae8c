"""Typed configuration: YAML files plus ``section.key=value`` overrides.

Every parameter of vidray is named once, here. The CLI overrides, the MLflow
params and (later) the Tune search space all use these dotted names
(``clip.T``, ``model.name``), so nothing is translated by hand.

    cfg = load_config("configs/train/demo.yaml", ["clip.T=16", "optim.lr=0.01"])
    cfg.clip.T            # 16
    cfg.flat()["clip.T"]  # 16, as logged to MLflow

An unknown section or key, a value of the wrong type, or a value outside its
allowed set is a `VidrayError` that names the key (and the closest valid key).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from vidray.errors import VidrayError

FramesCodec = Literal["raw", "jpeg"]
FlowBackend = Literal["dis", "farneback", "tvl1", "raft", "none"]
# The families of the model zoo, named here so that a config names a model that exists
# without importing torch (a typo costs no seconds); `vidray.models.register` refuses a
# family missing from this list, so the two cannot drift apart.
ModelName = Literal[
    "simple3d",
    "single_frame",
    "late_fusion_fc",
    "late_fusion_pool",
    "early_fusion",
    "slow_fusion",
    "c3d",
    "two_stream",
    "cnn_lstm",
    "recurrent_conv",
    "r3d_18",
    "mc3_18",
    "r2plus1d_18",
    "i3d",
    "i3d_nl",
    "slowfast_r50",
    "slowfast_r101",
    "mvit_v1_b",
    "mvit_v2_s",
    "swin3d_t",
    "swin3d_s",
    "swin3d_b",
    "s3d",
]


@dataclass(frozen=True)
class IngestConfig:
    """Videos -> Parquet windows (``vidray ingest``)."""

    input: str = ""  # dataset root, or the CSV file for the csv / kinetics layouts
    layout: Literal["folders", "flat", "csv", "ucf101", "kinetics", "ava"] = "folders"
    output: str = ""  # ingest output: windows/, manifest.parquet, dataset.yaml
    split: int = 1  # ucf101 official split number (1..3)
    val_fraction: float = 0.2  # for layouts without split files: share of each class held out
    test_fraction: float = 0.0  # likewise for a test split (final numbers, never selection)
    fps: float = 10.0  # base frame rate every source is resampled to
    short_side: int = 128  # stored frames: short side in pixels (0 = keep source size)
    # a source smaller than short_side is enlarged at most this much per side (a 32x480
    # file is stored at 64x960, not 128x1920), noted on its manifest row; 0 = no limit
    max_upscale: float = 2.0
    window_frames: int = 32  # frames per stored window (W)
    window_stride: int = 32  # frames between window starts (W = non-overlapping)
    frames_codec: FramesCodec = "jpeg"
    jpeg_quality: int = 90
    segment_windows: int = 64  # windows per task at most: long videos are split across tasks
    # target size of a shard file: the windows of many videos of one split share a shard
    # (Kinetics-400 in ~1,000 files, not ~240,000), so an epoch opens few files
    shard_mb: float = 256.0
    # ava: video time of annotation second 0 is -offset (900 for AVA's 15-minute cuts
    # starting at second 900, 0 for full movies); windows are centred on keyframes
    ava_time_offset: float = 0.0
    decode_threads: int = 1  # PyAV threads per task (Ray parallelises across tasks)
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0  # for flow.backend=raft on GPU nodes, e.g. 0.25 = 4 tasks a GPU
    # what happens to an output that already holds a dataset: add = ingest new and changed
    # files, keep the rest (files gone from the input too); prune = add, then delete the
    # videos gone from the input; replace = delete the earlier dataset and start afresh
    # (also from another input or layout, which add and prune refuse)
    mode: Literal["add", "replace", "prune"] = "add"


@dataclass(frozen=True)
class FlowConfig:
    """Optical flow: how ingest computes it and how many fields a model reads."""

    backend: FlowBackend = "dis"  # "none" stores no flow (RGB-only datasets ingest faster)
    bound: float = 20.0  # pixels; flow is clipped to [-bound, bound] and quantized to uint8
    codec: FramesCodec = "raw"  # raw keeps the quantized values exactly; jpeg is ~3x smaller
    L: int | None = None  # flow fields per clip for flow-reading models (None = the model's)
    raft_model: Literal["raft_small", "raft_large"] = "raft_small"  # flow.backend=raft
    raft_weights: str = ""  # a local state_dict path or a torchvision weights name
    dis_preset: Literal["ultrafast", "fast", "medium"] = "fast"  # flow.backend=dis: speed/quality


@dataclass(frozen=True)
class ClipConfig:
    """How a training clip is derived from a stored window at read time."""

    T: int | None = None  # frames per clip (None = the model's declared T)
    stride: int = 2  # temporal stride in stored frames: needs (T-1)*stride+1 <= W
    crop: int | None = None  # square crop, random in training, centre in eval (None = model's)
    hflip: bool = True  # random horizontal flip in training (negates flow x)
    mean: list[float] | None = None  # R, G, B means (None = model.pretrained's, else ImageNet's)
    std: list[float] | None = None  # R, G, B stds (None = model.pretrained's, else ImageNet's)


@dataclass(frozen=True)
class ModelConfig:
    """A registered family and the knobs families share; None = the family's (paper) default.

    A knob set for a family that has no such argument is an error that lists
    the family's arguments (`vidray.models.build`).
    """

    name: ModelName = "simple3d"  # a family of the zoo (`vidray models` lists them)
    width: int | None = None  # channels of the first stage; later stages scale with it
    depth: int | None = None  # ResNet depth (18, 50, ...) where the family has one
    dropout: float | None = None  # before the classifier
    pretrained: str = ""  # weights file (any layout), vidray checkpoint or torchvision name
    alpha: int | None = None  # slowfast: fast/slow frame-rate ratio (None = checkpoint's)
    fusion_kernel: int | None = None  # slowfast: lateral conv time extent (None = checkpoint's)
    time_padding: Literal["replicate", "zeros"] | None = None  # i3d: None = what weights need
    fusion: str | None = None  # two_stream: avg | concat | conv
    streams: str | None = None  # two_stream: both | rgb | flow (train one stream alone)
    hidden: int | None = None  # late_fusion_fc MLP / cnn_lstm LSTM size
    layers: int | None = None  # cnn_lstm LSTM layers
    taps: list[int] | None = None  # recurrent_conv: ResNet stages whose maps feed ConvGRUs


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = "adamw"  # the optimiser
    lr: float = 3e-3  # peak rate, reached at the end of warm-up
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4  # decoupled for adamw, L2 for sgd
    # Set every optimiser step. The default keeps the rate flat, as before schedules existed.
    schedule: Literal["cosine", "step", "constant"] = "constant"
    warmup_epochs: float = 0.0  # linear ramp from 0 to lr over these (fractional) epochs
    step_epochs: int = 30  # step: multiply the rate by gamma every step_epochs after warm-up
    gamma: float = 0.1  # step: the factor


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""  # an ingest output directory
    task: Literal["classify", "detect"] = "classify"  # detect: keyframe rows (layout ava)
    epochs: int = 8  # passes over the training split
    batch_size: int = 16  # per worker, per forward pass
    workers: int = 2  # Ray Train workers (DDP replicas)
    use_gpu: bool = False  # one GPU per worker (NCCL, bf16)
    cpus_per_worker: float = 1.0  # CPUs each worker reserves (fractions share a core)
    seed: int = 0  # model init, clip sampling and shard order
    val_split: str = "val"  # split evaluated after every epoch
    storage_path: str = "runs"  # checkpoints and Ray Train state: a path or s3://, gs://, ...
    run_name: str = ""  # MLflow run name and Ray Train run name ("" = generated)
    shuffle_buffer: int = 64  # clips in each worker's local shuffle buffer
    grad_accum: int = 1  # batches per optimiser step (effective batch = this x batch x workers)
    clip_grad_norm: float = 0.0  # max global gradient norm (0 = no clipping)
    label_smoothing: float = 0.0  # of the cross-entropy targets
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast; on CPU it works but is slow
    resume_from: str = ""  # a checkpoint directory or URI: continue its epochs and LR schedule
    max_failures: int = 2  # worker failures survived by restarting from the last checkpoint
    # register the best model (an MLflow pyfunc model) under this name in the MLflow
    # model registry ("" = log it with the run only)
    register_model: str = ""


@dataclass(frozen=True)
class DetectionConfig:
    """Spatio-temporal action detection as a task (``train.task=detect``): training,
    its evaluation, and what `vidray detect` runs with."""

    proposal_threshold: float = 0.8  # person boxes at or above this score are classified
    eval_boxes: Literal["proposals", "truth"] = "proposals"  # what evaluation classifies
    box_jitter: float = 0.05  # training: each box edge moves by up to this share of the box
    max_boxes: int = 32  # boxes per keyframe at most (the highest-scoring proposals)
    eval_label_map: str = ""  # classes frame-mAP averages over ("" = all with ground truth)
    roi_size: int = 7  # RoIAlign output (SlowFast: 7x7, then spatial max pool)
    res5_dilation: int = 2  # 3D ResNet backbones: res5's 3x3 dilation (SlowFast's AVA setup)
    # a classification checkpoint the backbone starts from: vidray's (e.g. a Kinetics run),
    # or PyTorchVideo's / PySlowFast's files, as model.pretrained takes them
    backbone_checkpoint: str = ""


@dataclass(frozen=True)
class DetectConfig:
    """``vidray detect``: what to run on, with which models, and where results go."""

    video: str = ""  # a video file, or a folder of videos (a Ray Data job, one CSV each)
    checkpoint: str = ""  # a detection checkpoint directory (or URI) written by training
    detector: str = ""  # a torchvision Faster R-CNN state_dict file (or COCO_V1)
    # the torchvision Faster R-CNN builder that detect.detector's weights fit
    detector_arch: Literal[
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
    ] = "fasterrcnn_resnet50_fpn"
    proposals: str = ""  # person boxes from a CSV or FAIR .pkl (video_id = file stem), no detector
    time_offset: int = 0  # the annotation second of a video's first frame (AVA cuts: 900)
    output: str = ""  # the CSV ("" = <video stem>_detections.csv), or a folder for a folder
    render: str = ""  # an .mp4 to draw the boxes and top actions on (single video only)
    render_short_side: int = 0  # the drawn video's short side (0 = the source's size)
    workers: int = 2  # model replicas of the folder job (Ray Data actors)


@dataclass(frozen=True)
class PredictConfig:
    """``vidray predict``: a classification checkpoint on new videos."""

    checkpoint: str = ""  # a classification checkpoint directory (or URI) written by training
    # a video file, a folder of videos, a CSV with a ``path`` column, or a URI prefix
    # (s3://...); anything but one local file runs as a Ray Data job
    video: str = ""
    output: str = ""  # the answers' folder ("" = predictions/<video or folder name>)
    format: Literal["csv", "jsonl"] = "csv"  # predictions.csv + timeline.csv, or .jsonl
    top_k: int = 5  # classes per video and per window
    stride_s: float = 0.0  # seconds between windows (0 = the training data's window stride)
    temporal_views: int = 1  # clips per window, as eval.temporal_views
    spatial_views: int = 1  # crops per clip, as eval.spatial_views
    render: str = ""  # an .mp4 to draw the top-3 labels and a timeline on (one video)
    render_short_side: int = 0  # the drawn video's short side (0 = the source's size)
    workers: int = 1  # model replicas of the Ray Data job
    use_gpu: bool = False  # one GPU per replica


@dataclass(frozen=True)
class ServeConfig:
    """``vidray serve``: a classifier behind HTTP with Ray Serve."""

    checkpoint: str = ""  # a classification checkpoint directory (or URI)
    model: str = ""  # or an MLflow model URI (models:/NAME/VERSION, runs:/ID/model)
    host: str = "127.0.0.1"  # listen on this address only (0.0.0.0: every interface)
    port: int = 8000
    num_replicas: int = 1  # model replicas
    gpus_per_replica: float = 0.0
    max_batch_size: int = 8  # window chunks (8 windows each) batched into one model call
    batch_wait_timeout_s: float = 0.01  # how long a replica waits to fill a batch
    max_upload_mb: float = 200.0  # larger uploads get 413
    max_duration_s: float = 600.0  # longer videos get 422
    top_k: int = 5


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = ""  # a checkpoint directory (or URI) written by training
    data: str = ""  # ingest output to evaluate ("" = the training data)
    split: str = "val"  # the split to evaluate (train, val or test)
    temporal_views: int = 1  # clips per window, evenly spaced over its valid offsets
    spatial_views: int = 1  # crops per clip: 1 = centre, 3 = both ends and centre of the long side
    output: str = ""  # where reports go ("" = <checkpoint>/eval_<split>, or eval/... for a URI)
    workers: int = 0  # model replicas of a Ray Data batch-inference job (0 = in-process)
    use_gpu: bool = False  # one GPU per replica (with eval.workers > 0)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "vidray"  # the MLflow experiment runs go to


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # "" = $RAY_ADDRESS, else a local Ray started for this job
    num_cpus: int = 0  # for a local Ray only (0 = all cores)
    # Ray's own console lines: warning shows vidray's lines and real warnings; info
    # (the --verbose flag) brings back Ray's INFO logs and its notes from workers.
    log_level: Literal["debug", "info", "warning", "error"] = "warning"


@dataclass(frozen=True)
class Config:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def flat(self) -> dict[str, Any]:
        """Every parameter under its dotted name, e.g. ``{"clip.T": 8, ...}``."""
        return {
            f"{section.name}.{key.name}": getattr(getattr(self, section.name), key.name)
            for section in dataclasses.fields(self)
            for key in dataclasses.fields(getattr(self, section.name))
        }

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return build_dataclass(cls, data, prefix="")

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Config:
        """A config an older vidray may have written (a checkpoint's meta.yaml), read
        in today's names: a renamed key moves to its new name instead of being refused."""
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for old, new in RENAMED.items():
            (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
            if old_key in data.get(old_section, {}):
                data.setdefault(new_section, {})[new_key] = data[old_section].pop(old_key)
        # A detector's model.pretrained was its backbone's classification checkpoint.
        if data.get("train", {}).get("task") == "detect" and data.get("model", {}).get(
            "pretrained"
        ):
            checkpoint = data["model"].pop("pretrained")
            data.setdefault("detection", {})["backbone_checkpoint"] = checkpoint
        # Detectors trained before res5 was dilated were trained without.
        if data.get("train", {}).get("task") == "detect":
            data.setdefault("detection", {}).setdefault("res5_dilation", 1)
        return cls.from_dict(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults) and apply ``key=value`` overrides.

    A file may start with ``extends: other.yaml`` (relative to itself): the other
    file is read first and this one's keys override it, section by section. The
    per-family configs use it so a dataset's schedule is written once.
    """
    data = read_config_file(Path(path)) if path else {}
    return Config.from_dict(apply_overrides(data, overrides or []))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` (sections of a config file) with ``section.key=value`` items set;
    a value is parsed as YAML, so ``clip.T=8`` is an int and ``model.taps=[2,3]`` a list."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise VidrayError(f"override {item!r} is not of the form section.key=value")
        section, _, name = key.strip().partition(".")
        value = yaml.safe_load(raw) if raw.strip() else ""
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise VidrayError(f"config section {section!r} must be a mapping")
        data[section][name] = value
    return data


def read_config_file(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One config file with its ``extends`` chain merged under it."""
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise VidrayError(f"config file not found: {path}{where}")
    if path.resolve() in chain:
        raise VidrayError(f"{path}: 'extends' loops back to itself")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise VidrayError(f"{path}{where}: not valid YAML ({problem})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise VidrayError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    data = dict(loaded or {})
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise VidrayError(f"{path}: 'extends' must be one file name, got {base!r}")
    merged = read_config_file(path.parent / base, (*chain, path.resolve()))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


# Keys a user may still type from an older vidray: each is refused with its new name,
# never read under the old one.
RENAMED = {
    "train.num_workers": "train.workers",
    **{
        f"detect.{key}": f"detection.{key}"
        for key in (
            "proposal_threshold",
            "eval_boxes",
            "box_jitter",
            "max_boxes",
            "eval_label_map",
            "roi_size",
        )
    },
}


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise VidrayError(f"config: {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if f"{prefix}{key}" in RENAMED:
            raise VidrayError(f"config: '{prefix}{key}' was renamed to '{RENAMED[prefix + key]}'")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise VidrayError(
                f"config: unknown key '{prefix}{key}'{hint}; valid: {', '.join(names)}"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            values[key] = build_dataclass(kind, value, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, kind, f"{prefix}{key}")
    return cls(**values)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check ``value`` against a field's type; ints are accepted where floats are."""
    origin = get_origin(kind)
    if origin is Literal:
        allowed = get_args(kind)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), map(str, allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise VidrayError(
                f"config: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}{hint}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(kind):
            return None
        return _coerce(value, next(a for a in get_args(kind) if a is not type(None)), key)
    if origin is list:
        if not isinstance(value, list):
            raise VidrayError(f"config: {key} must be a list, got {value!r}")
        (item,) = get_args(kind)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; it is what people type for a rate.
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise VidrayError(f"config: {key} must be {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One documented key: what `vidray config` prints and `--help` shows."""

    key: str  # dotted, e.g. "clip.T"
    kind: str  # the type as a user writes it: "int", "jpeg|raw", "int or null"
    default: Any
    comment: str  # the comment beside (and above) the field in its class
    choices: tuple[Any, ...] | None = None  # the allowed values of a Literal key


def settings(section: str, cls: type) -> list[Setting]:
    """The keys of one config section with their types, defaults and comments.

    The comments are read from the class's source, so the one place that
    documents a key (the line that declares it) is also what the CLI prints.
    """
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):  # a subsection: its keys, dotted
            out += settings(f"{section}.{f.name}", kind)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = get_args(kind) if get_origin(kind) is Literal else None
        out.append(
            Setting(
                key=f"{section}.{f.name}",
                kind=_kind_name(kind),
                default=default,
                comment=comments.get(f.name, ""),
                choices=choices,
            )
        )
    return out


def all_settings() -> list[Setting]:
    """Every key of `Config`, section by section."""
    hints = typing.get_type_hints(Config)
    return [s for f in dataclasses.fields(Config) for s in settings(f.name, hints[f.name])]


def _kind_name(kind: Any) -> str:
    origin = get_origin(kind)
    if origin is Literal:
        return "|".join(map(str, get_args(kind)))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(kind) if a is not type(None)]
        return " or ".join(_kind_name(a) for a in inner) + " or null"
    if origin is list:
        return f"list of {_kind_name(get_args(kind)[0])}"
    return getattr(kind, "__name__", str(kind))


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment: comment lines right above it, then the one beside it."""
    import ast
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source shipped: keys still list, without comments
        return {}
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above = []
        line = node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        out[node.target.id] = " ".join([*above, *beside])
    return out
