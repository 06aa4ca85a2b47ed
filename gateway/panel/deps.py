"""What the panel works with, handed over once by the wiring when the panel is mounted.

`PanelDeps` is built by gateway.app after the engines, the blob store and the intake exist, so a
route never sees a half-built gateway; routes receive it through the `Deps` dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy import Engine

from gateway.intake import Intake
from gateway.settings import Settings
from store.blobs import BlobStore

_STATE_KEY = "panel_deps"


@dataclass(frozen=True)
class PanelDeps:
    settings: Settings
    engine: Engine  # cases, directory, attachments
    journal_engine: Engine  # the journal (its own database file on SQLite)
    blobs: BlobStore
    intake: Intake  # the one durable write the form goes through
    panel_secret: str  # verifies the panel's JWTs and signs download links


def provide(app: FastAPI, deps: PanelDeps) -> None:
    """Hand the panel its dependencies: done once, by the wiring, before the app serves."""
    setattr(app.state, _STATE_KEY, deps)


def panel_deps(request: Request) -> PanelDeps:
    deps = getattr(request.app.state, _STATE_KEY, None)
    if not isinstance(deps, PanelDeps):
        # Only an app built for its description (OpenAPI) has none; it never serves requests.
        raise RuntimeError("the panel was mounted without its dependencies")
    return deps


Deps = Annotated[PanelDeps, Depends(panel_deps)]
