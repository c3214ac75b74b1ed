"""Deprecated: padding-free packing moved to `mmmmodal.training.packing`.

`from processing.packing import ...` keeps working (with a FutureWarning) for recipes and scripts that name it.
"""

import warnings

from mmmmodal.training.packing import (  # noqa: F401
    PACKED_KEYS,
    ROW_LENGTHS,
    MMMModalPackingCollator,
    pack_rows,
    plan_rows,
)

warnings.warn("`processing.packing` is deprecated: import `MMMModalPackingCollator`, `pack_rows` and `plan_rows` "
              "from `mmmmodal.training.packing`.", FutureWarning, stacklevel=2)
