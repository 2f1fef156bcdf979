"""The one client of minicloud's public API: ``Client`` (sync) and ``AsyncClient``
execute ``Request``s, which ``api`` builds for each operation, with the same retry
policy (429 and 503 are waited out as the server asks, for ``retry_for_s`` in all) and
the same errors (``ApiError`` with the API's code and message; ``Unreachable``)."""

from minicloud_client.transport import (
    RETRY_FOR_S,
    ApiError,
    AsyncClient,
    Client,
    Reply,
    Request,
    Unreachable,
)

__all__ = ["RETRY_FOR_S", "ApiError", "AsyncClient", "Client", "Reply", "Request", "Unreachable"]
