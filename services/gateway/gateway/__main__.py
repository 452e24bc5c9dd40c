"""`python -m gateway`: serve the app with uvicorn on GatewaySettings host/port."""

from __future__ import annotations

import uvicorn

from fhirschema_bus.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
