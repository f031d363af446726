"""The README of an audit bundle, in Korean and English (app/proof/bundle.py writes it)."""

README_TEXT = """\
# consent-ledger audit bundle / 동의 원장 감사 번들

Tenant / 테넌트: `{tenant}` · events / 이벤트: {events} · tree size / 트리 크기: {tree_size} ·
created / 생성: {created_at}

## 한국어

이 파일은 한 테넌트의 동의 원장 전체를, 서비스나 데이터베이스 없이 누구나 다시 계산해 검증할 수 있도록
묶은 것입니다.

- `events.ndjson`: Merkle 로그의 순서대로 한 줄에 한 이벤트. `event`는 API가 보여 주는 이벤트 그대로이며,
  `hash` = SHA-256(RFC 8785로 정규화한 `event`에서 `hash`를 뺀 것). 체인 버전 1 이벤트는 그 해시가 덮는
  원래 페이로드(`legacy`)를 함께 싣습니다.
- `notices.json`: 이벤트가 인용한 고지문(개인정보 처리방침 등) 전문. `sha256` = SHA-256(본문 UTF-8).
- `disclosures.json`: 이벤트가 인용한 항목별 고지 내용. `hash` = SHA-256(RFC 8785(content)).
- `catalog.json`: 카탈로그(동의 항목, 수집 경로, 고지문, 수탁사, 웹훅 수신처, 설정)의 모든 변경 이력:
  변경 전후, 누가, 언제. 각 이벤트가 기록될 때 화면에 보인 양식을 이것으로 다시 만들 수 있습니다.
- `checkpoints.json`: 서명된 체크포인트(Ed25519, compact JWS). 각 체크포인트의 `root_hash`는 처음
  `tree_size`개 이벤트의 Merkle 루트(RFC 9162)입니다. `jwks.json`: 서비스의 공개 키.
- `manifest.json`: 각 파일의 SHA-256과 크기.
- IP 주소·사용자 에이전트 같은 원본 증거는 들어 있지 않습니다(버전 2 이벤트는 키가 있는 커밋먼트만
  가집니다).{v1_ko}

검증:

    consent-ledger verify-bundle {filename} [--public-key 공개키.pem|jwks.json] [--trusted-checkpoint 체크포인트.json]

번들 안의 `jwks.json`은 번들을 만든 쪽이 준 것이므로, 감사인은 서비스가 따로 공개한 키를
`--public-key`로 주는 것이 좋습니다(키를 바꾼 적이 있으면 쓰인 키 모두). 예전에 받아 둔 체크포인트
(CHECKPOINT_DIR의 파일이나 `ledger.checkpoint` 웹훅 본문)를 `--trusted-checkpoint`로 주면, 그 뒤에 과거
기록이 고쳐졌는지(서비스의 키로 다시 서명했더라도) 드러나고, `--public-key`가 없으면 모든 체크포인트가
그 체크포인트에 서명한 키로 서명되어 있어야 합니다. 둘 다 없으면 번들 자신의 키를 믿었다는 경고가
출력됩니다. 종료 코드: 0 유효, 1 깨진 곳 있음(종류·위치·설명 출력), 2 읽을 수 없는 입력(검증기의 크기
제한을 넘는 번들 포함).

직접 검증기를 만들려면 consent-ledger 저장소의 `docs/proof-test-vectors.md`(정규화 규칙, 바이트 단위
정의, 시험 벡터)를 보십시오.

## English

This file holds one tenant's whole consent ledger, so that anyone can recompute and check it without
the service or its database.

- `events.ndjson`: one event per line, in Merkle log order. `event` is the event exactly as the API
  prints it; `hash` = SHA-256 of the RFC 8785 form of `event` minus `hash`. Chain version 1 events also
  carry the original payload their hash covers (`legacy`).
- `notices.json`: the full text of every notice the events cite; `sha256` = SHA-256(UTF-8 body).
- `disclosures.json`: every purpose disclosure the events cite; `hash` = SHA-256(RFC 8785(content)).
- `catalog.json`: the catalog's whole history (purposes, collection points, notices, processors,
  webhook endpoints, settings): before and after, who, when; the form each event was recorded on can
  be rebuilt from it.
- `checkpoints.json`: signed checkpoints (Ed25519, compact JWS); each `root_hash` is the RFC 9162
  Merkle root of the first `tree_size` events. `jwks.json`: the service's public keys.
- `manifest.json`: the SHA-256 and size of every file.
- No raw evidence (IP address, user agent): version 2 events carry only a keyed commitment to it.{v1_en}

To verify:

    consent-ledger verify-bundle {filename} [--public-key KEY.pem|jwks.json] [--trusted-checkpoint CHECKPOINT.json]

The bundle's own `jwks.json` comes from whoever made the bundle: an auditor should give the key the
service published elsewhere with `--public-key` (every key it used, if it changed keys). A checkpoint
saved earlier (a file from CHECKPOINT_DIR or a `ledger.checkpoint` webhook body) given with
`--trusted-checkpoint` shows whether history it covered was rewritten since, even if re-signed with the
service's own key; without `--public-key`, every checkpoint must then be signed by the key that signed
the saved one. With neither, verify-bundle warns that it trusted the bundle's own keys. Exit status:
0 valid, 1 breaks found (kind, where, detail printed), 2 unreadable input (a bundle past the verifier's
size limits included).

To write your own verifier, see `docs/proof-test-vectors.md` in the consent-ledger repository
(canonical form, byte-by-byte definitions, test vectors).
"""


# Chain version 1 events (docs/proof-test-vectors.md section 8), said where they are in a bundle.
V1_KO = """
  단, 체인 버전 1 이벤트 {v1}건은 해시가 원본을 덮으므로 `legacy`에 IP·사용자 에이전트가 들어 있습니다.
  이 이벤트들의 해시는 `legacy` 페이로드만 덮습니다. 출력된 이벤트 가운데 회원 ID(`subject_id`),
  `purpose`, `collection_point`, 고지문(`notice`)의 `key`·`version`·`sha256`·`superseded_at`,
  `evidence`는 해시가 덮지 않는 값입니다(페이로드에는 그 대신 내부 ID가 있습니다). 나머지 값은
  페이로드와 값과 형식까지 같아야 하고, 버전 1 이벤트는 모든 버전 2 이벤트보다 앞에만 올 수 있습니다."""
V1_EN = """
  Except: the {v1} chain version 1 events carry their IP address and user agent in `legacy`, because
  their hash covers them. Their hash covers that payload, not the printed event: of these events, the
  member id (`subject_id`), `purpose`, `collection_point`, the notice's `key`, `version`, `sha256` and
  `superseded_at`, and `evidence` are not covered by their hash (the payload holds internal ids
  instead). Every other printed member must agree with the payload, value and type, and version 1
  events may only come before every version 2 event."""
