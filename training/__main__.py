"""python -m training [--config FILE] [--key=value ...] [--dry-run]   (--help: the config files and every key)"""
import sys

import yaml

from training.config import ConfigError, load_config, usage
from training.loop import preflight, resume_status, run


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(usage())
        return 0
    dry_run = "--dry-run" in argv
    config_path = None
    rest = []
    it = iter(a for a in argv if a != "--dry-run")
    for arg in it:
        if arg == "--config":
            config_path = next(it, None)
            if config_path is None:
                return fail("--config needs a file")
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        cfg = load_config(config_path, rest)
    except (OSError, ValueError, TypeError) as e:  # a missing file, an unknown key, a wrong type: no traceback
        return fail(e)
    try:
        if dry_run:
            return check_only(cfg)
        results = run(cfg)
    except ConfigError as e:  # found before any work: a missing path, no such device, another run's directory
        return fail(e)
    text = results["stages"].get("text", {}).get("best")
    if text:
        kept = " (the EMA teacher's weights)" if text.get("kept") == "ema" else ""
        print(f"best text epoch {text['epoch']}{kept}: dev WA-F1 {text['dev_wa_f1']:.2f}, "
              f"test WA-F1 {text['test_wa_f1']:.2f}")
    print(f"run directory: {cfg.run_dir}")
    return 0


def check_only(cfg) -> int:
    """--dry-run: the resolved config as YAML (what the run would write to config.json) and the checks a run makes
    before any work (backbone, captions, MELD, device, the run directory), without training or writing anything:
    e.g. before a job on a lent GPU whose minutes are counted."""
    preflight(cfg)
    status = resume_status(cfg)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(f"# checks passed; run_dir {cfg.run_dir}: {status}")
    return 0


def fail(error) -> int:
    print(f"python -m training: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
