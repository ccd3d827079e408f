"""Request traces for replay: public trace loaders, a diurnal generator, rate scaling.

Pure: no Ray, no clock; randomness only from seeds or Generators the caller passes in.
"""

from heteroscale_ray.traces.jsonl import load_jsonl
from heteroscale_ray.traces.loaders import (
    load_azure_csv,
    load_burstgpt_csv,
    load_csv,
    load_trace,
)
from heteroscale_ray.traces.request import Request
from heteroscale_ray.traces.synthetic import (
    AZURE_CONV_INPUT,
    AZURE_CONV_OUTPUT,
    LengthDist,
    diurnal_rate,
    diurnal_trace,
    make_rng,
)
from heteroscale_ray.traces.trace import Trace, TraceError
from heteroscale_ray.traces.transforms import (
    concat,
    overlay,
    scale_rate,
    shape_keeping_shift,
    slice_trace,
    thin,
    time_compress,
)

__all__ = [
    "AZURE_CONV_INPUT",
    "AZURE_CONV_OUTPUT",
    "LengthDist",
    "Request",
    "Trace",
    "TraceError",
    "concat",
    "diurnal_rate",
    "diurnal_trace",
    "load_azure_csv",
    "load_burstgpt_csv",
    "load_csv",
    "load_jsonl",
    "load_trace",
    "make_rng",
    "overlay",
    "scale_rate",
    "shape_keeping_shift",
    "slice_trace",
    "thin",
    "time_compress",
]
