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
