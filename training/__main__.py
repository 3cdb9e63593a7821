"""python -m training [--config FILE] [--key=value ...]   (--help: the config files and every key)"""
import sys

from training.config import ConfigError, load_config, usage
from training.loop import run


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(usage())
        return 0
    config_path = None
    rest = []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config_path = next(it)
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        cfg = load_config(config_path, rest)
    except (OSError, ValueError, TypeError) as e:  # a missing file, an unknown key, a wrong type: no traceback
        print(f"python -m training: error: {e}", file=sys.stderr)
        return 2
    try:
        results = run(cfg)
    except ConfigError as e:  # found before any work: a missing path, no such device, another run's directory
        print(f"python -m training: error: {e}", file=sys.stderr)
        return 2
    text = results["stages"].get("text", {}).get("best")
    if text:
        kept = " (the EMA teacher's weights)" if text.get("kept") == "ema" else ""
        print(f"best text epoch {text['epoch']}{kept}: dev WA-F1 {text['dev_wa_f1']:.2f}, "
              f"test WA-F1 {text['test_wa_f1']:.2f}")
    print(f"run directory: {cfg.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
