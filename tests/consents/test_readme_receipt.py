"""The README's receipt check runs as printed: the public key from the JWKS, PyJWT, nothing else."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re

from app.cli import ROOT
from tests.helpers import sign_up


def _snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"e\.g\. with PyJWT:\n\n```python\n(.*?)```", readme, re.S).group(1)


async def test_the_readme_receipt_check_runs_as_printed(client, auth, demo, tmp_path):
    response = (await sign_up(client, auth(demo), "readme-1", granted={"marketing-sms"})).json()
    (tmp_path / "jwks.json").write_text((await client.get("/.well-known/consent-ledger/jwks.json")).text)
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            exec(_snippet(), {"response": response})  # noqa: S102 - the README's own code
    finally:
        os.chdir(cwd)
    assert out.getvalue().startswith("readme-1 [(")
    assert "('marketing-sms', 'granted')" in out.getvalue()
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"]
