"""Training configuration: one typed dataclass, overridden by a YAML file, then by --key=value.

Unknown keys and values of the wrong type are errors (nanoGPT's configurator idea, without executing
any config file). Paper defaults (Table 2) are the dataclass defaults.
"""
from __future__ import annotations

import dataclasses
import difflib
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

TEXT_MODES = ("frozen", "lora", "full")
CORPORA = ("meld", "own")  # MELD, or your own dialogues in MELD's CSV columns (TrainConfig.corpus)
FUSIONS = ("residual", "concat")  # ddvlm_core.fusion.FUSIONS, named here without importing torch
SD_SELECT = ("student", "ema", "either")  # the weights a self-distilled text run keeps (see TrainConfig.sd_select)
VALUE_RANGES = (  # (fields, test, what the test allows)
    (("lr", "head_lr", "sd_tau", "response_tau", "feature_tau"), lambda v: v > 0, "> 0"),
    (("max_tokens", "eval_batch_size", "lora_r"), lambda v: v >= 1, ">= 1"),
    (("weight_decay", "grad_clip", "cmkd_alpha", "cmkd_beta", "lambda_jsd", "limit_dialogues", "time_budget_min",
      "num_threads"), lambda v: v >= 0, ">= 0"),
    (("sd_alpha", "ema_decay", "warmup_ratio", "punctuation_dropout"), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (("dropout", "lora_dropout"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("seed",), lambda v: 0 <= v < 2**32, "in [0, 2**32) (numpy's seeds)"),
)
HOSTING_KEYS = ("run_dir", "feature_cache", "eval_batch_size", "num_threads", "time_budget_min",
                "state_every", "deterministic", "calibrate")  # not what is trained


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


def option(default: Any, help: str):
    """A TrainConfig field: its default and the one description that ``python -m training --help`` prints."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # what to train
    stages: tuple[str, ...] = option(("text", "visual", "fusion"), "stages to run, in order: text, visual, fusion")
    text_mode: str = option("full", "how the text backbone trains: full (the paper's), lora (peft), frozen "
                                    "(mask states cached once, heads trained on them)")
    self_distillation: bool = option(True, "EMA self-distillation of the text branch (Section 3.4); false: CE only")
    cross_modal_kd: bool = option(True, "response + feature distillation text -> visual (Section 3.5); "
                                        "false: the visual head trains on CE alone")
    speaker_tokens: bool = option(True, "speaker tokens <s1>, <s2>... in the prompt; false: Table 4's row "
                                        "without them")
    # model
    text_backbone: str = option("all-mpnet-base-v2", "text encoder: a name in ddvlm_core.assets or a local "
                                                     "model folder (from_pretrained, no download)")
    caption_embedder: str = option("all-MiniLM-L6-v2", "Sentence-BERT model that embeds captions")
    max_tokens: int = option(511, "prompt length in tokens; the earliest context is dropped first")
    dropout: float = option(0.2, "dropout before the text, visual and fusion heads (Table 2)")
    # optimisation (Table 2)
    epochs: int = option(10, "epochs per stage (Table 2)")
    batch_size: int = option(4, "training batch size (Table 2)")
    lr: float = option(1e-5, "AdamW peak learning rate of the text backbone and its head (Table 2)")
    head_lr: float = option(1e-3, "learning rate of the heads trained on cached features (frozen mode), of the "
                                  "visual head and of the fusion")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.1, "share of the steps with linear warm-up; then linear decay to 0")
    grad_clip: float = option(1.0, "gradient norm clip (0: none)")
    ema_decay: float = option(0.99, "EMA teacher decay lambda (Table 2)")
    sd_alpha: float = option(0.7, "self-distillation weight alpha of the CE: L = a CE + (1 - a) tau^2 KL "
                                  "(Table 2)")
    sd_tau: float = option(2.0, "self-distillation temperature tau (Table 2)")
    sd_select: str = option("student", "which weights a self-distilled text run keeps at its best dev epoch: "
                                       "student (our reading of Section 3.4), ema (the EMA teacher's), either "
                                       "(whichever scores higher on dev that epoch; the teacher is scored "
                                       "every epoch anyway)")
    cmkd_alpha: float = option(1.0, "weight alpha of the response loss in L_visual (Table 2)")
    cmkd_beta: float = option(1.0, "weight beta of the feature loss in L_visual (Table 2)")
    response_tau: float = option(4.0, "temperature of the response loss (Table 2)")
    feature_tau: float = option(1.0, "temperature of the feature loss's similarity softmax (Table 2)")
    lambda_jsd: float = option(0.2, "weight of the JSD term in the feature loss (Table 2)")
    fusion_alpha_init: float = option(0.3, "initial value of the fusion's learnable residual scale alpha")
    fusion: str = option("residual", "how the fusion stage combines the branches: residual (Section 3.6's residual "
                                     "gated fusion) or concat (Table 4's w/o Residual Fusion: one linear classifier "
                                     "on [h_text || h_visual], the simple concatenation Section 3.6 sets it against)")
    # LoRA (text_mode = lora)
    lora_r: int = option(16, "rank r of each LoRA adapter")
    lora_alpha: int = option(32, "LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = option(0.1, "dropout on the LoRA path")
    lora_targets: tuple[str, ...] = option(("q", "k", "v", "o", "query", "key", "value", "dense"),
                                           "names of the Linear modules that get adapters")
    lora_layers: tuple[int, ...] = option((), "encoder layers that get adapters, e.g. 8,9,10,11 (empty: all)")
    lora_speaker_tokens: bool = option(False, "also train the embedding rows of the speaker tokens <s0>..<s9> "
                                              "(LoRA leaves the embeddings frozen, where the speaker tokens stay "
                                              "near-duplicates: the mean of their pieces, cosine 0.93-0.97); "
                                              "nothing to train when speaker_tokens is false")
    cache_frozen_layers: bool = option(False, "with lora_layers above layer 0: run the frozen layers below the "
                                              "lowest adapted one once per split (eval mode, cached in "
                                              "feature_cache) and train only the layers above; those frozen "
                                              "layers then drop nothing out")
    init_checkpoint: str = option("", "a ddvlm checkpoint with a LoRA adapter (e.g. checkpoints/default) to go on "
                                      "training from, text_mode lora: its adapter, in the layers it has, and its "
                                      "text head are where training starts; of its adapter only the layers in "
                                      "lora_layers train (empty: all), and its own rank, alpha, dropout and targets "
                                      "are kept (lora_r, lora_alpha, lora_dropout, lora_targets do not apply). "
                                      "Empty: a new adapter")
    # data
    meld_dir: str = option("", "folder of MELD's CSVs (empty: the repository's data/meld), or of your own corpus's "
                               "(corpus: own)")
    corpus: str = option("meld", "meld: MELD, whose test split must be its whole 2,610 utterances; own: your own "
                                 "dialogues (e.g. a study's, python -m ddvlm_ros.corpus) in MELD's CSV "
                                 "files and columns in meld_dir (train/dev/test_sent_emo.csv; Dialogue_ID, "
                                 "Utterance_ID, Speaker, Utterance, Emotion: empty for a turn that is context "
                                 "only), of any size, scored on its own dev and test: not comparable to the paper")
    limit_dialogues: int = option(0, "> 0: only the first N dialogues per split (smoke runs and tests only: "
                                     "the test score is then not one on MELD's test split)")
    caption_source: str = option("none", "none (text only) or a captions JSONL file or folder "
                                         "(python -m training.captions)")
    punctuation_dropout: float = option(0.0, "share of the training prompts that go, each epoch, in lower case "
                                             "without punctuation, the whole dialogue, as an ASR that does not "
                                             "punctuate writes it (ddvlm_core.asr_noise.unpunctuate; drawn anew each "
                                             "epoch): a model trained on MELD's subtitles alone scores far lower on "
                                             "such transcripts (reports/replay_asr_noise.md). Dev and test stay as "
                                             "MELD has them. 0: none (the paper's)")
    length_bucketing: bool = option(True, "batch prompts of similar length together (less padding)")
    bucket_megabatch: int = option(0, "with length_bucketing, 0: the same length-sorted batches every epoch, in a "
                                      "new order; N: batches made anew each epoch inside random groups of N batches' "
                                      "prompts, each group sorted by length (transformers' group_by_length: 50)")
    # run
    seed: int = option(0, "random seed (data order, initialisation, dropout)")
    device: str = option("cpu", "torch device: cpu, cuda, cuda:1 ...")
    bf16: bool = option(False, "bf16 autocast (GPU)")
    run_dir: str = option("runs/default", "where the run writes its config, scores, states and checkpoint; "
                                          "an interrupted run there resumes")
    feature_cache: str = option(".cache/ddvlm/features", "folder of cached features and layer states")
    eval_batch_size: int = option(32, "batch size of dev/test scoring")
    calibrate: bool = option(True, "after training, fit the temperature of the checkpoint's confidence on dev "
                                   "(ddvlm_core.calibration; no answer changes) and score dev and test's "
                                   "calibration before and after: one more dev and test pass per stage")
    num_threads: int = option(0, "torch CPU threads (0: torch's default)")
    time_budget_min: float = option(0.0, "> 0: no epoch is started that would end past this many minutes "
                                         "(time-boxed runs)")
    deterministic: bool = option(False, "deterministic kernels (torch.use_deterministic_algorithms, a fixed "
                                        "cuBLAS workspace): a GPU run of one seed then repeats bit for bit, as a "
                                        "CPU run does, so SD and no SD share epoch 1 exactly; slower on a GPU")
    state_every: int = option(1, "epochs between saved resume states (0: only when the run stops); a kill "
                                 "loses the rest")

    def __post_init__(self):
        self.validate()  # also for TrainConfig(...) and dataclasses.replace(cfg, ...) in code, not only files

    def validate(self) -> "TrainConfig":
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        unknown = set(self.stages) - {"text", "visual", "fusion"}
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}")
        if not self.stages:
            raise ValueError("stages must name at least one of text, visual, fusion")
        if self.text_mode == "frozen" and self.lora_layers:
            raise ValueError("lora_layers only applies to text_mode: lora")
        if self.lora_speaker_tokens and self.text_mode != "lora":
            raise ValueError("lora_speaker_tokens only applies to text_mode: lora (full trains every embedding, "
                             "frozen none)")
        if self.lora_speaker_tokens and self.cache_frozen_layers:
            raise ValueError("lora_speaker_tokens changes the input of the frozen layers that cache_frozen_layers "
                             "caches: use one or the other")
        if self.init_checkpoint and self.text_mode != "lora":
            raise ValueError("init_checkpoint only applies to text_mode: lora (it continues a checkpoint's adapter)")
        if self.init_checkpoint and self.lora_speaker_tokens:
            raise ValueError("init_checkpoint continues a checkpoint's adapter as it is: lora_speaker_tokens cannot "
                             "add token rows to it")
        if self.cache_frozen_layers and not (self.text_mode == "lora" and self.lora_layers and min(self.lora_layers)):
            raise ValueError("cache_frozen_layers needs text_mode: lora with lora_layers above layer 0 (the layers "
                             "below the lowest adapted one are cached)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.sd_select not in SD_SELECT:
            raise ValueError(f"sd_select must be one of {SD_SELECT}, got {self.sd_select!r}")
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {CORPORA}, got {self.corpus!r}")
        if self.corpus == "own" and not self.meld_dir:
            raise ValueError("corpus: own needs meld_dir, the folder of your corpus's CSVs")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.bucket_megabatch < 0:
            raise ValueError("bucket_megabatch must be >= 0 (0: the same length-sorted batches every epoch)")
        if self.state_every < 0:
            raise ValueError("state_every must be >= 0 (0: save the resume state only when the run stops)")
        for names, allowed, text in VALUE_RANGES:  # a NaN fails every comparison, so it is refused too
            for name in names:
                if not allowed(getattr(self, name)):
                    raise ValueError(f"{name} must be {text}, got {getattr(self, name)!r}")
        return self

    def lora_settings(self, tokenizer=None) -> dict:
        """The adapter settings a checkpoint stores (``DDVLMConfig.lora``, ddvlm_core.lora); with
        ``lora_speaker_tokens``, the ids (in ``tokenizer``) of the speaker tokens whose embedding rows train."""
        from ddvlm_core.context import speaker_token_names

        train_tokens = self.lora_speaker_tokens and self.speaker_tokens and tokenizer is not None
        return {"r": self.lora_r, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "targets": list(self.lora_targets), "layers": list(self.lora_layers),
                "trainable_tokens": tokenizer.convert_tokens_to_ids(speaker_token_names()) if train_tokens else []}

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Defaults <- ``values`` (e.g. a run directory's config.json); unknown keys and bad types raise."""
        types = {f.name: f.type for f in fields(cls)}
        unknown = set(values) - set(types)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}{_close_names(unknown, types)} "
                             "(python -m training --help lists them)")
        return dataclasses.replace(cls(), **{k: _coerce(k, types[k], v) for k, v in values.items()})

    def model_config(self):
        """The ddvlm_core ``DDVLMConfig`` of the model this run trains (one place for loop and export)."""
        from ddvlm_core.model import DDVLMConfig

        return DDVLMConfig(text_backbone=self.text_backbone, caption_embedder=self.caption_embedder,
                           dropout=self.dropout, max_tokens=self.max_tokens, speaker_tokens=self.speaker_tokens,
                           fusion_alpha_init=self.fusion_alpha_init, fusion=self.fusion)


def config_differences(a: Mapping[str, Any], b: Mapping[str, Any],
                       may_differ: Sequence[str] = HOSTING_KEYS) -> list[str]:
    """The keys whose values differ between two config dicts (``to_dict`` form), ``may_differ`` left out. A key
    one of them lacks (written before the key existed) counts as its default, which is what that run used."""
    defaults = TrainConfig().to_dict()
    return sorted(k for k in set(a) | set(b)
                  if k not in may_differ and a.get(k, defaults.get(k)) != b.get(k, defaults.get(k)))


def _yaml(text: str, where: str) -> Any:
    """yaml.safe_load, its syntax error a ValueError naming ``where`` (the commands print it as one line)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{where}: not valid YAML{at} ({getattr(e, 'problem', None) or e})") from None


def _close_names(unknown: set[str], known: Mapping[str, Any]) -> str:
    """"; did you mean lrr -> lr?" for misspelt keys, or "" where no known key is close to any."""
    close = [f"{k} -> {m[0]}" for k in sorted(unknown) if (m := difflib.get_close_matches(k, known, n=1))]
    return f"; did you mean {', '.join(close)}?" if close else ""


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Convert a YAML / command-line value to the field's type, or raise."""
    origin = str(kind)
    if isinstance(value, str) and not origin.startswith("str"):
        value = _yaml(value, name)
    if origin.startswith("tuple"):
        if value is None:  # --lora_layers= (empty), or "lora_layers:" with no value in a YAML file
            return ()
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
        loaded = _yaml(Path(path).read_text(encoding="utf-8"), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file is a mapping of keys to values")
        values.update(loaded)
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like --key=value (--help lists the keys)")
        values[key.replace("-", "_")] = value
    return TrainConfig.from_dict(values)


CONFIG_DIR = Path(__file__).parent / "configs"


def usage() -> str:
    """``python -m training --help``: the config files with what their opening comment says, then every key with
    its type, default and description (from the fields, so a new key is listed without more code)."""
    about = ("Trains DDVLM on MELD with one loop: the text branch (EMA self-distillation), the visual branch "
             "(cross-modal distillation) and the fusion. A value comes from the defaults (Table 2), then --config, "
             "then --key=value; an unknown key, a wrong type or a value out of range is an error. An interrupted "
             "run resumes from its run_dir. --dry-run prints the resolved config and makes the checks a run makes "
             "before any work (backbone, captions, MELD, device, run_dir), then stops.")
    lines = ["usage: python -m training [--config FILE] [--key=value ...] [--dry-run]", "",
             *textwrap.wrap(about, 100), "", f"config files ({CONFIG_DIR.relative_to(CONFIG_DIR.parents[1])}/):"]
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        lines += _wrapped(path.name, _opening_comment(path))
    lines += ["", "keys (--key=value; a list as a,b,c):"]
    for f in fields(TrainConfig):
        lines += _wrapped(f"--{f.name}={override_text(f.default)}  ({f.type})", f.metadata["help"])
    return "\n".join(lines)


def _opening_comment(path: Path) -> str:
    comment = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("# ").strip())
    return " ".join(comment)


def override_text(value: Any) -> str:
    """A config value as --key=value writes it: true / false, a list as a,b,c."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _wrapped(head: str, text: str, width: int = 100) -> list[str]:
    return ["  " + head] + textwrap.wrap(text, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
