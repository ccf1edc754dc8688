"""The remote directory layout of one app (see DESIGN.md, "Remote layout")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Paths under `deploy_to`; pure, so command builders can use them in tests."""

    root: str

    @property
    def releases(self) -> str:
        return f"{self.root}/releases"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def shared(self) -> str:
        return f"{self.root}/shared"

    @property
    def venvs(self) -> str:
        return f"{self.root}/venvs"

    @property
    def backups(self) -> str:
        return f"{self.root}/backups"

    @property
    def meta(self) -> str:
        return f"{self.root}/.shipfab"

    @property
    def lock(self) -> str:
        return f"{self.meta}/lock"

    @property
    def log(self) -> str:
        return f"{self.meta}/releases.jsonl"

    @property
    def mirror(self) -> str:
        return f"{self.root}/repo"

    @property
    def pidfile(self) -> str:
        return f"{self.shared}/gunicorn.pid"

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{release_id}"

    def venv(self, venv_hash: str) -> str:
        return f"{self.venvs}/{venv_hash}"
