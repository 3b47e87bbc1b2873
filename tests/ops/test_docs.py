"""The operator docs point at files, sections and settings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.ops import COMPOSE_FILE, EXAMPLE_ENV, ROOT

from realtime_edge.settings import EdgeSettings
from realtime_notifications.settings import NotificationsSettings

pytestmark = pytest.mark.unit

DOCS = [ROOT / "docs" / name for name in ("operations.md", "scaling.md", "security.md")]
LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:deploy|services|tests|scripts|docs|shared)/[\w./-]+|compose\.yaml)`")
SETTING = re.compile(r"`((?:EDGE|JWT|NOTIFICATIONS|OUTBOX|MAX|LOG|DATABASE|AMQP|REALTIME)_\w+)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_reach_files_and_sections(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path) if path else doc
        assert file.exists(), f"{doc.name}: {target}"
        if anchor:
            assert anchor in anchors(file.read_text()), f"{doc.name}: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_repository_files_exist(doc: Path) -> None:
    # deploy/make-secrets.sh writes these on the operator's machine: compose must read them.
    secret_files = set(re.findall(r"\$\{SECRETS_DIR:-[^}]+\}/(\w+)", COMPOSE_FILE.read_text()))
    for rel in REPO_PATH.findall(doc.read_text()):
        folder, _, name = rel.rpartition("/")
        if folder == "deploy/secrets" and name:
            assert name in secret_files, f"{doc.name}: {rel}"
        else:
            assert (ROOT / rel.rstrip("/")).exists(), f"{doc.name}: {rel}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_settings_exist(doc: Path) -> None:
    fields = {*EdgeSettings.model_fields, *NotificationsSettings.model_fields}
    known = {name.upper() for name in fields}
    # Every setting may come from a file instead: `<VAR>_FILE` names it (docs/operations.md).
    known |= {f"{name}_FILE" for name in known}
    known |= set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    known |= set(re.findall(r"^#? ?(\w+)=", EXAMPLE_ENV.read_text(), re.M))

    assert set(SETTING.findall(doc.read_text())) - known == set()
