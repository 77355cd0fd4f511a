"""The package's private, non-propagating logger."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

logger = logging.getLogger("spared_tools")
logger.propagate = False
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("spared_tools: %(message)s"))
    logger.addHandler(_handler)


@contextlib.contextmanager
def quiet_lightning(verbose: bool, *, validation: bool = True, eval_modules: bool = False) -> Iterator[None]:
    """Silence Lightning's chatter around a training run unless ``verbose``.

    Lowers Lightning's info lines ("GPU available", "Seed set") to warnings, and with
    ``validation=False`` (a run without a validation split) also drops Lightning's warning that a
    ``validation_step`` exists but no validation data was given. ``eval_modules=True`` (a model that
    keeps some modules in eval mode on purpose, e.g. frozen batch norms) drops the warning about
    modules found in eval mode at the start of training.
    """
    names = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
    saved = {n: logging.getLogger(n).level for n in names}
    try:
        with warnings.catch_warnings():
            if not validation:
                warnings.filterwarnings("ignore", message=".*validation_step.*but have no .val_dataloader")
            if eval_modules:
                warnings.filterwarnings(
                    "ignore", message=r".*module\(s\) in eval mode at the start of training"
                )
            if not verbose:
                for n in names:
                    logging.getLogger(n).setLevel(logging.WARNING)
            yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)
