"""A processor's token asks only about the channels its endpoints serve (issue 9 point 4).

A token with the claim `processor` (the processor's key in the tenant's registry) is limited to the
channels its enabled webhook endpoints subscribe to; an endpoint without a channel filter serves
every channel. A processor without such an endpoint may ask about none. Tokens without the claim
(the tenant's own services, auditors) are not limited.
"""

from __future__ import annotations

import asyncpg

from app.auth.deps import Principal
from app.core.errors import Forbidden

CHANNELS = """
SELECT e.channels FROM webhook_endpoints e JOIN processors p ON p.id = e.processor_id
WHERE e.tenant_id = $1 AND p.tenant_id = $1 AND p.key = $2 AND e.deleted_at IS NULL AND e.enabled
"""


async def check_channel(pool: asyncpg.Pool, principal: Principal, channel: str) -> None:
    if principal.processor is None:
        return
    served: set[str] = set()
    for row in await pool.fetch(CHANNELS, principal.tenant, principal.processor):
        if not row["channels"]:
            return  # an endpoint that hears every channel
        served.update(row["channels"])
    if channel not in served:
        raise Forbidden(f"processor {principal.processor!r} may ask only about the channels its webhook endpoints "
                        f"serve ({', '.join(sorted(served)) or 'none'}), not {channel!r}")
