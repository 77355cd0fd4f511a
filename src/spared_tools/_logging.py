"""The package's private, non-propagating logger."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("spared_tools")
logger.propagate = False
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("spared_tools: %(message)s"))
    logger.addHandler(_handler)
