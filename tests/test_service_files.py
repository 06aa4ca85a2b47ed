"""The service files in config/ are the ones an operator installs: the unit must pass systemd's
own verifier, and the container recipe must copy what exists and start the real console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

UNIT = REPO / "config" / "support-gateway.service"
CONTAINERFILE = REPO / "config" / "Containerfile"


def test_systemd_unit_verifies_and_runs_the_gateway_as_its_own_user(tmp_path: Path) -> None:
    verifier = shutil.which("systemd-analyze")
    if verifier is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd; make test installs it)")
    text = UNIT.read_text()
    # Point the unit at this checkout's console script so the verifier can check the commands exist.
    script = Path(sys.executable).parent / "gateway"
    assert script.is_file(), "the gateway console script is not installed in the virtual environment"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/support-gateway/.venv/bin/gateway", str(script)))
    result = subprocess.run([verifier, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr
    service = dict(
        line.split("=", 1)
        for line in text.split("[Service]")[1].split("[Install]")[0].splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert service["User"] == "support-gateway"
    assert service["Restart"] == "always"
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["ExecStart"].endswith("gateway serve")


def test_containerfile_copies_what_exists_and_starts_gateway_serve() -> None:
    # Instructions start at the first column; indented lines continue the one before (HEALTHCHECK ... CMD).
    lines = [line.split() for line in CONTAINERFILE.read_text().splitlines() if line[:1].isalpha()]
    copies = [words[1:-1] for words in lines if words[0] == "COPY"]
    assert copies, "no COPY in the Containerfile"
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    cmd = next(words for words in lines if words[0] == "CMD")
    assert cmd[1:] == ['["gateway",', '"serve"]']
    assert any(words[0] == "USER" and words[1] != "root" for words in lines)
