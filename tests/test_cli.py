"""The CLI's cheap commands: validate explains errors with exit code 2; schema writes files."""

from __future__ import annotations

from pathlib import Path

import pytest

from heteroscale_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "validate",
            str(ROOT / "examples/services.yaml"),
            "--topology",
            str(ROOT / "examples/topology.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 service(s): chat, summarise" in out
    assert "64 GPUs" in out


def test_validate_bad_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: Chat!\n")
    rc = main(["validate", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{bad}: services[0].name" in err


def test_schema_writes(tmp_path: Path) -> None:
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "topology.schema.json").exists()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "heteroscale demo" in capsys.readouterr().out


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nobody listens


@pytest.mark.parametrize("command", ["status", "stop"])
def test_unreachable_address_fails_fast_with_a_hint(command: str) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(SystemExit) as e:
        main([command, "--address", address])
    message = str(e.value.code)
    assert f"cannot reach a Ray cluster at {address!r}" in message
    assert "--address" in message


def test_malformed_address_says_the_expected_form() -> None:
    with pytest.raises(SystemExit) as e:
        main(["status", "--address", "head-node:port"])
    assert "host:port" in str(e.value.code)
