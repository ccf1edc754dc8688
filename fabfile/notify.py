"""Webhook notifications (Slack-compatible JSON) on deploy start, success, failure and
rollback. A short timeout; a failing webhook never fails the deploy, it warns."""

from __future__ import annotations

import json
from typing import Any

from .inventory import NotifySettings
from .output import Printer

EMOJI = {"start": ":rocket:", "success": ":white_check_mark:", "failure": ":x:", "rollback": ":rewind:"}


def message(event: str, info: dict[str, Any]) -> dict[str, Any]:
    """The JSON body: Slack's `text`, plus every field under `shipfab` for other receivers."""
    hosts = ", ".join(info.get("hosts", []))
    text = f"{EMOJI.get(event, '')} shipfab {event}: {info.get('app')} {info.get('release', '')} on {hosts}"
    if info.get("revision"):
        text += f" (revision {str(info['revision'])[:12]})"
    if info.get("user"):
        text += f" by {info['user']}"
    if info.get("duration") is not None:
        text += f" in {info['duration']:.1f}s"
    if info.get("failed_step"):
        text += f"; failed at {info['failed_step']}: {info.get('reason', '')[:200]}"
    return {"text": text.strip(), "shipfab": {"event": event, **info}}


def send(settings: NotifySettings, event: str, info: dict[str, Any], printer: Printer) -> None:
    """POST the event to every webhook; secrets are masked in the payload."""
    if not settings.webhooks:
        return
    import requests  # only when a webhook is configured: it costs ~90-190 ms (bench/README.md)

    body = json.dumps(printer.redact.mask_data(message(event, info)))
    for url in settings.webhooks:
        try:
            resp = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=settings.timeout)
            if resp.status_code >= 400:
                printer.line(f"warning: webhook answered {resp.status_code} for the {event} notification", level=0)
        except requests.RequestException as exc:
            printer.line(f"warning: webhook failed for the {event} notification: {type(exc).__name__}", level=0)
