"""Test helper, run under `accelerate launch`: what `train_conditional.py FLAGS` does, plus train()'s testing aid
`debug_dump_dir` (each process writes the image indices it trained on and its final weights), which no flag exposes.

    accelerate launch ... tests/train_and_dump.py DUMP_DIR FLAGS...
"""

import sys

from hfdiff.training import configure_script_logging, parse_config, train

if __name__ == "__main__":
    dump_dir, *flags = sys.argv[1:]
    configure_script_logging()
    train(parse_config(flags), conditional=True, debug_dump_dir=dump_dir)
