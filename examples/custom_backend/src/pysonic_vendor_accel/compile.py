"""``python -m pysonic_vendor_accel.compile PATH``: write an example compiled model file."""

from __future__ import annotations

import sys
from pathlib import Path

from pysonic_vendor_accel import compile_model

if __name__ == "__main__":
    print(compile_model(Path(sys.argv[1])))
