"""GuideLLM against a HeteroScale OpenAI endpoint, offline: a tokenizer built here, no downloads.

GuideLLM (https://github.com/vllm-project/guidellm) is the vLLM project's load generator. It
needs a Hugging Face tokenizer to size synthetic prompts and count tokens; this script trains
one locally with the `tokenizers` package on local text (the repository's Markdown and Python
files) and saves it as a tokenizer folder `AutoTokenizer.from_pretrained` loads, so nothing is
fetched from a hub at run time. The default vocabulary is byte-level (256 byte tokens plus an
end-of-text token, no merges): token counts then equal the served numpy model's byte tokenizer,
so GuideLLM's tokens/s and the server's agree. `--vocab-size 2000` trains BPE merges instead,
for an endpoint with a subword tokenizer.

Install the optional extra first (it pulls torch, hence not a test dependency):

    pip install -e '.[guidellm]'

Three ways to run it:

    # a running endpoint (e.g. `heteroscale start ...`): GuideLLM drives it
    python benchmarks/guidellm_bench.py --target http://127.0.0.1:8000 --model chat
    # the demo's serving on an embedded local cluster, kept up until Ctrl-C (no GuideLLM needed)
    python benchmarks/guidellm_bench.py --serve --port 8000
    # both in one process: serve locally, benchmark, stop everything
    python benchmarks/guidellm_bench.py --local

Each rate runs `--seconds` at a constant request rate with synthetic prompts of
`--prompt-tokens` and `--output-tokens`. Prints a table (per rate: requests ok / errored,
request/s, output tokens/s, TTFT, inter-token latency and end-to-end latency percentiles) and
writes `results/guidellm/summary.json` (the table's numbers) beside GuideLLM's own
`guidellm.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "guidellm"
EOT = "<|endoftext|>"
INSTALL_HINT = "install the optional extra: pip install -e '.[guidellm]'"


# --- the tokenizer ------------------------------------------------------------------------


def corpus_files(root: Path = ROOT) -> list[Path]:
    """Local text to train on: the repository's Markdown and Python files (sorted, so the
    trained tokenizer is the same on every machine with the same checkout)."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    files += sorted((root / "heteroscale_ray").rglob("*.py"))
    return [f for f in files if f.is_file()]


def build_tokenizer(out_dir: Path, vocab_size: int, files: list[Path]) -> Path:
    """Train a byte-level BPE tokenizer on ``files`` and save it as a Hugging Face tokenizer
    folder (tokenizer.json + tokenizer_config.json) that ``AutoTokenizer`` loads offline."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise SystemExit(f"the `tokenizers` package is missing: {INSTALL_HINT}") from None
    if vocab_size < 257:
        raise SystemExit(f"--vocab-size must be >= 257 (256 bytes + {EOT}), got {vocab_size}")
    if not files:
        raise SystemExit("no local text to train the tokenizer on")
    tok = Tokenizer(models.BPE())
    # no regex split: every byte is a token before merges, as in the server's ByteTokenizer
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(f) for f in files], trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}, indent=2) + "\n"
    )
    return out_dir


# --- GuideLLM -----------------------------------------------------------------------------


def guidellm_command(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    found = shutil.which("guidellm")
    if found:
        return [found]
    beside = Path(sys.executable).with_name("guidellm")
    if beside.exists():
        return [str(beside)]
    raise SystemExit(f"GuideLLM is not installed (no `guidellm` command): {INSTALL_HINT}")


def run_guidellm(
    cmd: list[str],
    *,
    target: str,
    model: str,
    tokenizer: Path,
    rates: list[float],
    seconds: float,
    prompt_tokens: int,
    output_tokens: int,
    request_format: str,
    stream: bool,
    seed: int,
    out_json: Path,
) -> dict[str, Any]:
    """One GuideLLM run: a constant-rate profile per rate, synthetic prompts, JSON output."""
    args = [
        *cmd,
        "run",
        "--backend",
        json.dumps(
            {
                "kind": "openai_http",
                "target": target,
                "model": model,
                "request_format": request_format,
                "stream": stream,  # streamed: TTFT and inter-token latency are measured
                "http2": False,
                "timeout": 300.0,
            }
        ),
        "--profile",
        json.dumps({"kind": "constant", "rate": rates}),
        "--constraint",
        json.dumps({"kind": "max_duration", "seconds": seconds}),
        "--data",
        json.dumps(
            {
                "kind": "synthetic_text",
                "prompt_tokens": prompt_tokens,
                "output_tokens": output_tokens,
            }
        ),
        "--tokenizer",
        json.dumps({"kind": "huggingface_auto", "model": str(tokenizer)}),
        "--seed",
        json.dumps({"kind": "static", "value": seed}),
        "--output",
        json.dumps({"kind": "json", "path": str(out_json)}),
        "--disable-console-interactive",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",  # the tokenizer is a local folder: never ask a hub
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    print(f"[guidellm] {' '.join(args[:2])} ... against {target} ({model})", flush=True)
    done = subprocess.run(args, env=env, text=True, capture_output=True)
    log = out_json.with_suffix(".log")
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0 or not out_json.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"GuideLLM failed (exit {done.returncode}); log in {log}:\n{tail}")
    return json.loads(out_json.read_text())


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _dist(metrics: dict[str, Any], name: str) -> dict[str, float | None]:
    """Median and p95 of one of GuideLLM's metric distributions over successful requests."""
    succ = _get(metrics, name, "successful") or {}
    pct = succ.get("percentiles") or {}
    return {"median": succ.get("median"), "p95": pct.get("p95"), "p99": pct.get("p99")}


def summarise(report: dict[str, Any], streamed: bool = True) -> list[dict[str, Any]]:
    """One row per benchmark (rate) of a GuideLLM JSON report; TTFT and inter-token latency
    exist only for streamed requests (GuideLLM reports 0 otherwise)."""
    none = {"median": None, "p95": None, "p99": None}
    rows = []
    for bench in report.get("benchmarks", []):
        m = bench.get("metrics", {})
        totals = _get(m, "request_totals") or {}
        strategy = _get(bench, "config", "strategy") or bench.get("scheduler", {}).get(
            "strategy", {}
        )
        rows.append(
            {
                "rate_rps": strategy.get("rate") if isinstance(strategy, dict) else None,
                "requests_ok": totals.get("successful"),
                "requests_errored": totals.get("errored"),
                "requests_incomplete": totals.get("incomplete"),
                "requests_per_s": _get(m, "requests_per_second", "successful", "mean"),
                "output_tokens_per_s": _get(m, "output_tokens_per_second", "successful", "mean"),
                "prompt_tokens_median": _get(m, "prompt_token_count", "successful", "median"),
                "output_tokens_median": _get(m, "output_token_count", "successful", "median"),
                "ttft_ms": _dist(m, "time_to_first_token_ms") if streamed else none,
                "itl_ms": _dist(m, "inter_token_latency_ms") if streamed else none,
                "latency_s": _dist(m, "request_latency"),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def f(x: Any, fmt: str, unit: str = "") -> str:
        return "-" if x is None else format(x, fmt) + unit

    head = (
        f"{'rate':>6} {'ok':>5} {'err':>4} {'req/s':>6} {'out tok/s':>9} "
        f"{'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} {'e2e p50':>8} {'e2e p95':>8}"
    )
    lines = [head]
    for r in rows:
        ttft, itl, e2e = r["ttft_ms"], r["itl_ms"], r["latency_s"]
        lines.append(
            f"{f(r['rate_rps'], '.2f'):>6} {f(r['requests_ok'], 'd'):>5} "
            f"{f(r['requests_errored'], 'd'):>4} {f(r['requests_per_s'], '.2f'):>6} "
            f"{f(r['output_tokens_per_s'], '.1f'):>9} "
            f"{f(ttft['median'], '.0f', 'ms'):>9} {f(ttft['p95'], '.0f', 'ms'):>9} "
            f"{f(itl['median'], '.1f', 'ms'):>8} {f(itl['p95'], '.1f', 'ms'):>8} "
            f"{f(e2e['median'], '.2f', 's'):>8} {f(e2e['p95'], '.2f', 's'):>8}"
        )
    return "\n".join(lines)


# --- local serving (the demo's service on an embedded cluster) ------------------------------


class LocalEndpoint:
    """The demo's P/D service (numpy model, emulated GPU timing) on an embedded labelled Ray
    cluster with the control plane; `stop()` removes everything it started."""

    def __init__(self, port: int) -> None:
        from heteroscale_ray.actors.control_plane import (
            ControlPlaneSettings,
            control_plane_status,
            start_control_plane,
        )
        from heteroscale_ray.actors.serving_adapter import ServingOptions
        from heteroscale_ray.demo import scenario
        from heteroscale_ray.local_cluster import start_local_cluster
        from heteroscale_ray.serving.emulation import EmulationConfig
        from heteroscale_ray.serving.model import ModelConfig

        self.model = scenario.SERVICE
        self.url = f"http://127.0.0.1:{port}"
        print("[serve] starting a local Ray cluster (the demo's 4 labelled fake-GPU hosts)")
        self._local = start_local_cluster(scenario.topology(), cpus_per_host=8)
        try:
            options = ServingOptions(
                engine=ModelConfig(n_layers=2, d_model=64, n_heads=4, max_context=512),
                emulation=EmulationConfig(enabled=True, time_scale=scenario.TIME_SCALE),
                graceful_shutdown_timeout_s=60.0,
            )
            settings = ControlPlaneSettings(period_s=2.0, soft_window_s=15.0, options=options)
            start_control_plane(
                scenario.services(), settings=settings, http_host="127.0.0.1", http_port=port
            )
            deadline = time.monotonic() + 240
            while True:
                st = control_plane_status(5)
                dgs = st.get("pre_scheduler", {}).get("dgs", [])
                if dgs and all(d["gate_open"] for d in dgs):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no DG came up in 240 s: {st.get('last_error')}")
                time.sleep(1.0)
        except BaseException:
            self.stop()
            raise
        print(f"[serve] model {self.model!r} at {self.url}/v1 (completions and chat)")

    def stop(self) -> None:
        from heteroscale_ray.actors.control_plane import stop_control_plane

        print("[serve] stopping the control plane, Serve and the local cluster")
        try:
            stop_control_plane(purge=True)
        finally:
            self._local.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- main ---------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace, target: str, model: str) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = build_tokenizer(out / "tokenizer", args.vocab_size, corpus_files())
    print(f"[tokenizer] {args.vocab_size}-token byte-level BPE trained on local text: {tok_dir}")
    raw = out / "guidellm.json"
    raw.unlink(missing_ok=True)
    report = run_guidellm(
        guidellm_command(args.guidellm),
        target=target,
        model=model,
        tokenizer=tok_dir,
        rates=args.rate,
        seconds=args.seconds,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
        request_format=args.request_format,
        stream=not args.no_stream,
        seed=args.seed,
        out_json=raw,
    )
    rows = summarise(report, streamed=not args.no_stream)
    summary = {
        "target": target,
        "model": model,
        "request_format": args.request_format,
        "stream": not args.no_stream,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "seconds_per_rate": args.seconds,
        "tokenizer_vocab": args.vocab_size,
        "guidellm_version": _get(report, "metadata", "guidellm_version"),
        "rows": rows,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {out / 'summary.json'} and {raw}")
    print(json.dumps(summary))
    failed = sum((r["requests_errored"] or 0) for r in rows)
    for error in first_errors(report):
        print(f"errored request: {error}", file=sys.stderr)
    return 0 if rows and failed == 0 else 1


def first_errors(report: dict[str, Any], limit: int = 3) -> list[str]:
    """The first distinct error messages of errored requests (GuideLLM keeps them per request)."""
    seen: list[str] = []
    for bench in report.get("benchmarks", []):
        for req in _get(bench, "requests", "errored") or []:
            msg = str(_get(req, "info", "error") or "").splitlines()[0:1]
            if msg and msg[0] not in seen:
                seen.append(msg[0])
            if len(seen) >= limit:
                return seen
    return seen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--target", help="a running endpoint, e.g. http://127.0.0.1:8000")
    mode.add_argument(
        "--serve", action="store_true", help="serve the demo's service locally until Ctrl-C"
    )
    mode.add_argument("--local", action="store_true", help="serve locally, benchmark, stop")
    ap.add_argument("--model", default="chat", help="served model (service) name (default chat)")
    ap.add_argument("--port", type=int, help="HTTP port for --serve/--local (default: a free one)")
    ap.add_argument(
        "--rate",
        type=float,
        nargs="+",
        default=[0.5, 1.0],
        help="constant request rates to run, req/s (default 0.5 1)",
    )
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per rate (default 60)")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="prompt tokens (default 256)")
    ap.add_argument("--output-tokens", type=int, default=32, help="output tokens (default 32)")
    ap.add_argument(
        "--request-format",
        default="/v1/completions",
        choices=("/v1/completions", "/v1/chat/completions"),
        help="OpenAI route GuideLLM calls (default /v1/completions)",
    )
    ap.add_argument(
        "--no-stream",
        action="store_true",
        help="non-streamed requests: end-to-end latency only, no TTFT or inter-token latency",
    )
    ap.add_argument(
        "--vocab-size",
        type=int,
        default=257,
        help="tokenizer vocabulary: 257 = bytes + end-of-text, the served model's token "
        "counts (default); larger trains BPE merges on local text",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidellm", help="the guidellm command (default: on PATH or beside python)")
    ap.add_argument("--out", default=str(RESULTS), help=f"output folder (default {RESULTS})")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.target:
        return benchmark(args, args.target.rstrip("/"), args.model)
    endpoint = LocalEndpoint(args.port or _free_port())
    try:
        if args.local:
            return benchmark(args, endpoint.url, endpoint.model)
        print("[serve] Ctrl-C to stop", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        endpoint.stop()


if __name__ == "__main__":
    sys.exit(main())
