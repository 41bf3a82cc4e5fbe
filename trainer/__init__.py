"""The trainer: prepare a dataset from talking-head videos, train both stages, export checkpoints."""

import logging

logger = logging.getLogger("emoji_model.trainer")
