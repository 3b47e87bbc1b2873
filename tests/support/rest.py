"""The notifications REST API as another service (or the user's other tab) calls it.

api = NotificationsApi(base_url, make_token, "alice")
notification_id = await api.create("Build #41 failed")
"""

from __future__ import annotations

from typing import Any

import httpx


class NotificationsApi:
    def __init__(self, base_url: str, make_token: Any, user: str) -> None:
        self.base = f"{base_url}/api/notifications"
        self.user = user
        admin_token = make_token("e2e-admin", permissions=["notification.manage"])
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.owner = {"Authorization": f"Bearer {make_token(user)}"}

    async def create(self, title: str) -> str:
        """Create one notification for the user; its id once the service committed it."""
        body = {"user_id": self.user, "type": "e2e", "title": title, "severity": "warning"}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(self.base, json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def create_many(self, titles: list[str]) -> list[str]:
        """Create them one after the other (one client, one connection): ids in that order."""
        ids: list[str] = []
        async with httpx.AsyncClient(timeout=10, headers=self.admin) as client:
            for title in titles:
                body = {"user_id": self.user, "type": "e2e", "title": title}
                response = await client.post(self.base, json=body)
                assert response.status_code == 201, response.text
                ids.append(str(response.json()["id"]))
        return ids

    async def mark_unread(self, notification_id: str) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{self.base}/{notification_id}/unread", headers=self.owner
            )
        assert response.status_code == 200, response.text
