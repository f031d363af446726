"""The certificate as a reader gets it: served over HTTP on 127.0.0.1 with the API's own headers
(its Content-Security-Policy enforced) and rendered by headless Chromium (Debian's `chromium`,
installed by `make test`). The DOM it builds is checked for the content, a screenshot and a PDF
printed on A4 are kept in artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import html
import re
import shutil
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.certificate.history import CLIENT_IP, HOSTILE, USER_AGENT, build

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 90  # seconds for one Chromium run
WIDTH, HEIGHT = 1100, 2400
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--enable-logging=stderr", "--v=0")


class _Replay(BaseHTTPRequestHandler):
    """Answers every GET with the API's response, byte for byte and with its headers."""

    status: int
    headers_out: list[tuple[str, str]]
    body: bytes

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(self.status)
        for name, value in self.headers_out:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium fonts-noto-cjk)")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


async def test_chromium_renders_the_certificate(client, auth, demo, tmp_path):
    made = await build(client, auth(demo), "cert-render", pause=0.4)
    events, checkpoint = made["events"], made["checkpoint"]
    response = await client.get("/v1/subjects/cert-render/certificate", headers=auth(demo, "audit:read"))
    assert response.status_code == 200, response.text

    keep = ("content-type", "content-security-policy", "x-content-type-options", "referrer-policy", "cache-control")
    handler = type("Replay", (_Replay,), {"status": response.status_code, "body": response.content,
                                          "headers_out": [(k, v) for k, v in response.headers.items() if k in keep]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/certificate"
    try:
        dom = _chromium(tmp_path, "--dump-dom", url)
        shot = _chromium(tmp_path, f"--screenshot={tmp_path / 'certificate.png'}", f"--window-size={WIDTH},{HEIGHT}",
                         "--hide-scrollbars", url)
        pdf = _chromium(tmp_path, f"--print-to-pdf={tmp_path / 'certificate.pdf'}", "--no-pdf-header-footer", url)
    finally:
        server.shutdown()
        thread.join(5)
    for run in (dom, shot, pdf):
        assert run.returncode == 0, run.stderr[-2000:]
        # the page's Content-Security-Policy let its stylesheet apply, and nothing tried to load or run
        assert "Content Security Policy" not in run.stderr, run.stderr[-2000:]

    page = dom.stdout
    for text in ("개인정보 동의 확인서", "Certificate of consent", "현재 상태", "State at issue", "상태 타임라인",
                 "Timeline", "고지된 내용", "Wording shown", "증거와 해시", "Evidence and hashes", "체크포인트",
                 "확인 방법", "How to check", "verify-bundle"):
        assert text in page, text
    for purpose in {e["purpose"] for e in events}:
        assert f'id="p-{purpose}"' in page, purpose
    for event in events:
        assert event["hash"] in page, event["seq"]
        assert re.search(rf'<g class="act" data-seq="{event["seq"]}"', page), event["seq"]
    assert len(re.findall(r'<g class="act"', page)) == len(events)
    assert '<svg class="timeline"' in page and checkpoint["root_hash"] in page
    assert html.escape(HOSTILE, quote=False) in page  # text in the rendered DOM, never an element
    assert "<script" not in page.lower() and CLIENT_IP not in page and USER_AGENT not in page

    ARTIFACTS.mkdir(exist_ok=True)
    png = (tmp_path / "certificate.png").read_bytes()
    width, height = _png_size(png)
    assert (width, height) == (WIDTH, HEIGHT)
    assert len(png) > 60_000  # a page of text and a chart, not a blank or error page
    pdf_bytes = (tmp_path / "certificate.pdf").read_bytes()
    assert pdf_bytes.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf_bytes)) >= 2
    for name in ("certificate.png", "certificate.pdf"):
        shutil.copy(tmp_path / name, ARTIFACTS / name)
    (ARTIFACTS / "certificate.html").write_bytes(response.content)
    print(f"\ncertificate rendered by Chromium: {ARTIFACTS / 'certificate.png'} ({width}x{height}, {len(png)} bytes), "
          f"{ARTIFACTS / 'certificate.pdf'}")
