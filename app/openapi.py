"""Print the app's OpenAPI document as committed in openapi.json (`make openapi`)."""

from __future__ import annotations

import json

from app.core.settings import Settings
from app.main import create_app

OPENAPI_SETTINGS = Settings(database_url="postgresql+asyncpg://unused/openapi", jwt_secret="openapi")


def document() -> str:
    return json.dumps(create_app(OPENAPI_SETTINGS).openapi(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(document(), end="")
