"""Training configuration: one typed dataclass, overridden by a YAML file, then by --key=value.

Unknown keys and values of the wrong type are errors (nanoGPT's configurator idea, without executing
any config file). Paper defaults (Table 2) are the dataclass defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

TEXT_MODES = ("frozen", "lora", "full")
SD_SELECT = ("student", "ema", "either")  # the weights a self-distilled text run keeps (see TrainConfig.sd_select)
VALUE_RANGES = (  # (fields, test, what the test allows)
    (("lr", "head_lr", "sd_tau", "response_tau", "feature_tau"), lambda v: v > 0, "> 0"),
    (("max_tokens", "eval_batch_size", "lora_r"), lambda v: v >= 1, ">= 1"),
    (("weight_decay", "grad_clip", "cmkd_alpha", "cmkd_beta", "lambda_jsd", "limit_dialogues", "time_budget_min",
      "num_threads"), lambda v: v >= 0, ">= 0"),
    (("sd_alpha", "ema_decay", "warmup_ratio"), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (("dropout", "lora_dropout"), lambda v: 0 <= v < 1, "in [0, 1)"),
)
HOSTING_KEYS = ("run_dir", "feature_cache", "eval_batch_size", "num_threads", "time_budget_min",
                "state_every", "deterministic")  # not what is trained


def mode_text(config: Mapping) -> str:
    """The text mode as reports name it (a run's config as a dict): "full", "frozen", "lora", or for LoRA on
    some layers e.g. "lora (layers 8-11; 0-7 cached)"."""
    layers = sorted(config.get("lora_layers") or ())
    if config["text_mode"] != "lora" or not layers:
        return config["text_mode"]
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    span = f"{layers[0]}-{layers[-1]}" if contiguous else ", ".join(map(str, layers))
    cached = f"; 0-{layers[0] - 1} cached" if config.get("cache_frozen_layers") else ""
    return f"lora (layers {span}{cached})"


def candidates(sd_select: str, scores: dict, teacher_scores: dict) -> list[tuple[str, dict]]:
    """The models an epoch's best-on-dev selection chooses from, as (name, scores): the student, or with an EMA
    teacher (``teacher_scores`` not empty) what ``sd_select`` names; "either" lists the student first, so a
    tie keeps the student."""
    if not teacher_scores or sd_select == "student":
        return [("student", scores)]
    if sd_select == "ema":
        return [("ema", teacher_scores)]
    return [("student", scores), ("ema", teacher_scores)]


class ConfigError(ValueError):
    """A configuration that cannot run here (a missing path, an absent device, another run's directory): the
    commands print it as a one-line error instead of a traceback."""


@dataclass
class TrainConfig:
    # what to train
    stages: tuple[str, ...] = ("text", "visual", "fusion")
    text_mode: str = "full"  # frozen | lora | full
    self_distillation: bool = True  # EMA self-distillation of the text branch (Section 3.4)
    cross_modal_kd: bool = True  # response + feature distillation text -> visual (Section 3.5)
    speaker_tokens: bool = True
    # model
    text_backbone: str = "all-mpnet-base-v2"
    caption_embedder: str = "all-MiniLM-L6-v2"
    max_tokens: int = 511
    dropout: float = 0.2
    # optimisation (Table 2)
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-5
    head_lr: float = 1e-3  # frozen mode trains only the heads, on cached features
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    sd_alpha: float = 0.7
    sd_tau: float = 2.0
    # which weights a self-distilled text run keeps at its best dev epoch: "student" (the trained model, our
    # reading of Section 3.4), "ema" (the EMA teacher's), or "either" (whichever scores higher on dev that epoch).
    # Selection uses dev only; the teacher is scored every epoch anyway (teacher_*_wa_f1 in the history)
    sd_select: str = "student"
    cmkd_alpha: float = 1.0
    cmkd_beta: float = 1.0
    response_tau: float = 4.0
    feature_tau: float = 1.0
    lambda_jsd: float = 0.2
    fusion_alpha_init: float = 0.3
    # LoRA (text_mode = lora)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "query", "key", "value", "dense")
    lora_layers: tuple[int, ...] = ()  # encoder layers that get adapters; () = all
    # with lora_layers above layer 0: run the frozen layers below the lowest adapted one once per split (eval
    # mode, cached in feature_cache) and train only the layers above; those frozen layers then drop nothing out
    cache_frozen_layers: bool = False
    # data
    meld_dir: str = ""  # "" = the repository's data/meld
    limit_dialogues: int = 0  # >0: first N dialogues per split (smoke runs and tests only)
    caption_source: str = "none"  # none (text only) | a captions JSONL file or folder (python -m training.captions)
    length_bucketing: bool = True
    # run
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    run_dir: str = "runs/default"
    feature_cache: str = ".cache/ddvlm/features"
    eval_batch_size: int = 32
    num_threads: int = 0  # 0 = torch default
    time_budget_min: float = 0.0  # >0: no epoch is started that would end past it (time-boxed runs)
    # deterministic kernels (torch.use_deterministic_algorithms, a fixed cuBLAS workspace): a GPU run of one seed
    # then repeats bit for bit, as a CPU run does, so SD and no SD share epoch 1 exactly; slower on a GPU
    deterministic: bool = False
    state_every: int = 1  # epochs between saved resume states (0: only when the run stops); a kill loses the rest

    def __post_init__(self):
        self.validate()  # also for TrainConfig(...) and dataclasses.replace(cfg, ...) in code, not only files

    def validate(self) -> "TrainConfig":
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        unknown = set(self.stages) - {"text", "visual", "fusion"}
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}")
        if self.text_mode == "frozen" and self.lora_layers:
            raise ValueError("lora_layers only applies to text_mode: lora")
        if self.cache_frozen_layers and not (self.text_mode == "lora" and self.lora_layers and min(self.lora_layers)):
            raise ValueError("cache_frozen_layers needs text_mode: lora with lora_layers above layer 0 (the layers "
                             "below the lowest adapted one are cached)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.sd_select not in SD_SELECT:
            raise ValueError(f"sd_select must be one of {SD_SELECT}, got {self.sd_select!r}")
        if self.state_every < 0:
            raise ValueError("state_every must be >= 0 (0: save the resume state only when the run stops)")
        for names, allowed, text in VALUE_RANGES:  # a NaN fails every comparison, so it is refused too
            for name in names:
                if not allowed(getattr(self, name)):
                    raise ValueError(f"{name} must be {text}, got {getattr(self, name)!r}")
        return self

    def lora_settings(self) -> dict:
        """The adapter settings a checkpoint stores (``DDVLMConfig.lora``, ddvlm_core.lora)."""
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "targets": list(self.lora_targets), "layers": list(self.lora_layers)}

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Defaults <- ``values`` (e.g. a run directory's config.json); unknown keys and bad types raise."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(values) - set(types)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return dataclasses.replace(cls(), **{k: _coerce(k, types[k], v) for k, v in values.items()})

    def model_config(self):
        """The ddvlm_core ``DDVLMConfig`` of the model this run trains (one place for loop and export)."""
        from ddvlm_core.model import DDVLMConfig

        return DDVLMConfig(text_backbone=self.text_backbone, caption_embedder=self.caption_embedder,
                           dropout=self.dropout, max_tokens=self.max_tokens, speaker_tokens=self.speaker_tokens,
                           fusion_alpha_init=self.fusion_alpha_init)


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any],
                       may_differ: Sequence[str] = HOSTING_KEYS) -> list[str]:
    """The keys whose values differ between two config dicts (``to_dict`` form), ``may_differ`` left out. A key
    one of them lacks (written before the key existed) counts as its default, which is what that run used."""
    defaults = TrainConfig().to_dict()
    return sorted(k for k in set(a) | set(b)
                  if k not in may_differ and a.get(k, defaults.get(k)) != b.get(k, defaults.get(k)))


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Convert a YAML / command-line value to the field's type, or raise."""
    origin = str(kind)
    if isinstance(value, str) and not origin.startswith("str"):
        value = yaml.safe_load(value)
    if origin.startswith("tuple"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]  # one element: --lora_layers=11
        element = origin.removeprefix("tuple[").split(",")[0].strip()  # "tuple[int, ...]" -> "int"
        return tuple(_coerce(name, element, v) for v in value)
    target = {"bool": bool, "int": int, "float": float, "str": str}[origin]
    if target is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-5" (no dot) as a string
        except ValueError:
            pass
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise TypeError(f"{name}: expected {origin}, got {value!r}")
    return value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- ['--key=value', ...]; unknown keys and bad types raise."""
    values: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file is a mapping of keys to values")
        values.update(loaded)
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like --key=value")
        values[key.replace("-", "_")] = value
    return TrainConfig.from_dict(values)
