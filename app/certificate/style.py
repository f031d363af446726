"""The certificate's one stylesheet (screen: a page on a desk; print: A4 with running heads and page
numbers) and the Content-Security-Policy that allows exactly it and nothing else."""

from __future__ import annotations

import base64
import hashlib

CSS = """
:root { --ink: #1a1a1a; --muted: #5b5b5b; --rule: #c9c9c9; --soft: #f4f2ee; --accent: #20406a; --bad: #9b1c1c;
        --good: #1b5e20; }
* { box-sizing: border-box; }
html { background: #e9e7e3; }
body { margin: 0; color: var(--ink); font: 10pt/1.5 "Noto Sans CJK KR", "Noto Sans KR", "Apple SD Gothic Neo",
       "Malgun Gothic", sans-serif; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
.page { width: 210mm; margin: 12mm auto; padding: 16mm 15mm 18mm; background: #fff;
        box-shadow: 0 1px 4px rgba(0,0,0,.18); }
header.doc { border-bottom: 2.5px solid var(--accent); padding-bottom: 4mm; margin-bottom: 5mm; }
.kicker { color: var(--accent); font-weight: 700; letter-spacing: .04em; font-size: 9.5pt; }
h1 { font-size: 20pt; margin: 1mm 0 3mm; letter-spacing: -.01em; }
h1 .en, h2 .en, h3 .en, th .en { font-weight: 400; color: var(--muted); }
h1 .en { font-size: 13pt; margin-left: 2mm; }
h2 { font-size: 12.5pt; margin: 7mm 0 2.5mm; padding-bottom: 1mm; border-bottom: 1px solid var(--rule);
     break-after: avoid; page-break-after: avoid; }
h2 .num { color: var(--accent); margin-right: 2mm; }
h2 .en { font-size: 10pt; margin-left: 2mm; }
h3 { font-size: 10.5pt; margin: 5mm 0 1.5mm; break-after: avoid; page-break-after: avoid; }
h3 .en { font-size: 9pt; margin-left: 1.5mm; }
p { margin: 1.5mm 0; }
.en-text { color: var(--muted); }
table { width: 100%; border-collapse: collapse; margin: 1.5mm 0 3mm; font-size: 8.5pt; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
th, td { text-align: left; vertical-align: top; padding: 1.3mm 1.6mm; border-bottom: 1px solid var(--rule); }
th { background: var(--soft); font-weight: 700; font-size: 8pt; }
th .en { display: block; font-size: 7pt; }
table.facts { font-size: 9pt; margin: 0; }
table.facts th { width: 44mm; background: none; border-bottom: 1px dotted var(--rule); }
table.facts td { border-bottom: 1px dotted var(--rule); }
.hash, .mono, pre { font-family: "Noto Sans Mono CJK KR", "DejaVu Sans Mono", "Consolas", monospace; }
.hash { font-size: 7.5pt; word-break: break-all; overflow-wrap: anywhere; }
.short { font-family: "DejaVu Sans Mono", monospace; font-size: 7.5pt; white-space: nowrap; }
pre { font-size: 7pt; line-height: 1.35; white-space: pre-wrap; word-break: break-all; background: var(--soft);
      padding: 2mm; margin: 1mm 0 2mm; border-left: 2px solid var(--rule); }
.article { color: var(--muted); font-size: 7.5pt; }
.small { font-size: 7.5pt; }
.nowrap { white-space: nowrap; }
td.num { text-align: right; }
table.summary td:nth-child(1) { width: 42%; } table.summary td:nth-child(2) { width: 26%; }
table.summary td:nth-child(4) { width: 13%; white-space: nowrap; }
table.summary th:nth-child(5) { width: 6%; white-space: nowrap; }
table.acts td:nth-child(1) { width: 5%; } table.acts td:nth-child(2) { width: 13%; white-space: nowrap; }
table.acts td:nth-child(3) { width: 17%; } table.acts td:nth-child(4) { width: 16%; }
table.acts td:nth-child(5) { width: 17%; } table.acts td:nth-child(6) { width: 12%; }
table.evidence td:nth-child(1) { width: 15%; } table.evidence td:nth-child(2) { width: 15%; }
table.evidence td:nth-child(3), table.evidence td:nth-child(4) { width: 27%; }
tr.group td { background: #edf1f6; font-size: 8.5pt; padding-top: 1.6mm; border-bottom: 1px solid #9fb0c6; }
tr.group { break-after: avoid; page-break-after: avoid; }
.status { display: inline-block; padding: 0 1.6mm; border-radius: 1mm; font-weight: 700; font-size: 8pt;
          border: 1px solid currentColor; white-space: nowrap; }
.s-granted { color: #1b5e20; } .s-acknowledged { color: #0d47a1; } .s-refused { color: #455a64; }
.s-withdrawn { color: #b34700; } .s-expired { color: #4e342e; } .s-revoked { color: #b71c1c; }
.ok { color: var(--good); font-weight: 700; } .bad { color: var(--bad); font-weight: 700; }
.pending { color: var(--muted); font-style: italic; }
.verdict { margin: 3mm 0 0; padding: 2.5mm 3mm; border: 1.5px solid var(--good); background: #f1f8f1; }
.verdict.broken { border-color: var(--bad); background: #fbf0f0; }
figure { margin: 2mm 0 3mm; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-size: 8pt; color: var(--muted); margin-top: 1mm; }
svg.timeline { display: block; width: 100%; height: auto; }
.wording { border: 1px solid var(--rule); padding: 2mm 3mm; margin: 2mm 0 3mm; break-inside: avoid;
           page-break-inside: avoid; }
.wording .langs { display: grid; grid-template-columns: 1fr 1fr; gap: 5mm; }
.wording dl { display: grid; grid-template-columns: 19mm 1fr; gap: .4mm 2mm; margin: .5mm 0; font-size: 8pt; }
.wording dt { color: var(--muted); }
.wording dd { margin: 0; }
.wording .lang { font-size: 7.5pt; font-weight: 700; color: var(--accent); margin-top: 1.5mm; }
ol.steps { padding-left: 5mm; margin: 1.5mm 0; } ol.steps li { margin: 1mm 0; }
.proof { border-top: 1px solid var(--rule); padding-top: 2mm; margin-top: 3mm; break-inside: avoid;
         page-break-inside: avoid; }
.proof ol { margin: 0; padding-left: 6mm; font-size: 7.5pt; }
.appendix { break-before: page; page-break-before: always; }
.sign { display: grid; grid-template-columns: 1fr 1fr; gap: 8mm; margin-top: 8mm; font-size: 8.5pt; }
.sign div { border-top: 1px solid var(--ink); padding-top: 1mm; color: var(--muted); }
footer.doc { margin-top: 6mm; padding-top: 2mm; border-top: 1px solid var(--rule); font-size: 7.5pt;
             color: var(--muted); }
@page { size: A4; margin: 14mm 13mm 16mm;
        @top-right { content: "개인정보 동의 확인서 · Consent certificate"; font-size: 7pt; color: #777; }
        @bottom-center { content: counter(page) " / " counter(pages); font-size: 7.5pt; color: #777; } }
@media print {
  html { background: none; }
  .page { width: auto; margin: 0; padding: 0; box-shadow: none; }
  body { font-size: 8.5pt; }
  table { font-size: 7.5pt; }
  h1 { font-size: 17pt; }
  h2 { margin-top: 5mm; }
  a { color: inherit; text-decoration: none; }
}
"""

CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")

# Nothing may load or run: no script, no fetch, no frame, no form; only the one stylesheet above
# (by its hash) and the inline SVG, which is part of the document.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'sha256-{CSS_HASH}'; img-src 'none'; "
                           "font-src 'none'; connect-src 'none'; script-src 'none'; object-src 'none'; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # one person's consents: no shared cache may keep them
}
