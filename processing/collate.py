"""Deprecated: the training collators moved to `mmmmodal.training`, row conversion to `processing.rows`.

`from processing.collate import ...` keeps working (with a FutureWarning) for recipes and scripts that name it.
"""

import warnings

from mmmmodal.training.collate import SPAN_TOKENS, MMMModalDataCollator  # noqa: F401
from mmmmodal.training.padding import MEDIA_INPUTS, pad_batch  # noqa: F401

from .rows import describe_row, prepare_dataset, to_training_row  # noqa: F401

warnings.warn("`processing.collate` is deprecated: import `MMMModalDataCollator` from `mmmmodal.training.collate`, "
              "`pad_batch` from `mmmmodal.training.padding`, and `to_training_row` / `prepare_dataset` from "
              "`processing.rows`.", FutureWarning, stacklevel=2)
