"""Small trace samples shipped inside the package, so replay, tune and the tests work from a
plain clone or a pip install without ../shared/data/traces.

Each sample is an unmodified excerpt (the first rows of a time window) of a public trace, in the
format the loaders read; ``data/SOURCES.md`` gives the source, licence and the exact cut. A
``--trace`` argument is either a sample name (``azure-conv``) or a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heteroscale_ray.traces.loaders import load_trace
from heteroscale_ray.traces.trace import Trace, TraceError

DATA_DIR = Path(__file__).resolve().with_name("data")


@dataclass(frozen=True)
class Sample:
    """One packaged sample: its file in ``data/`` and a one-line description for help texts."""

    name: str
    filename: str
    description: str

    @property
    def path(self) -> Path:
        return DATA_DIR / self.filename


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample(
            "azure-conv",
            "azure-conv.csv",
            "Azure LLM inference trace 2023, conversation: first 15 min, 4,424 requests "
            "(CC-BY 4.0)",
        ),
        Sample(
            "mooncake",
            "mooncake.jsonl",
            "Mooncake FAST'25 trace with prefix hash ids: first 5 min, 1,091 requests, "
            "prompts up to 135k tokens (Apache-2.0)",
        ),
        Sample(
            "servegen-mlarge",
            "servegen-mlarge.csv",
            "ServeGen m-large day 1, 08:00-08:20, 3,573 requests (Apache-2.0)",
        ),
    )
}


def samples_help() -> str:
    """The sample names for a ``--trace`` help text."""
    return ", ".join(SAMPLES)


def resolve_trace(arg: str | Path) -> Path:
    """The file a ``--trace`` argument means: a packaged sample's file for a sample name, else
    the path itself. A name that is neither a sample nor an existing file is an error that
    lists the samples, so a typo does not read as a missing file only."""
    text = str(arg)
    sample = SAMPLES.get(text)
    if sample is not None:
        return sample.path
    path = Path(text)
    if path.exists():
        return path
    kind = "file" if path.suffix or "/" in text else "trace file or packaged sample"
    raise TraceError(
        text,
        None,
        f"no such {kind}; give a path to a .csv (Azure) or .jsonl (Mooncake) trace, or one "
        f"of the packaged samples: {samples_help()}",
    )


def load_trace_arg(arg: str | Path, *, skip_malformed: bool = False) -> Trace:
    """Load a ``--trace`` argument: a packaged sample name or a trace file path."""
    return load_trace(resolve_trace(arg), skip_malformed=skip_malformed)
