"""A real headless Chromium for the browser tests, driven by playwright: found on PATH, never optional.

tests/install-system-deps.sh installs Chromium wherever the system puts it; the tests look for it
the same way (`chromium`, `chromium-browser`, `google-chrome` on PATH). A missing browser fails the
test's setup (an error, not a skip), so a CI without it cannot report the page as tested.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


def chromium_executable() -> str:
    """The Chromium on PATH; fails the calling test (setup error) when there is none."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)}): run tests/install-system-deps.sh")


@asynccontextmanager
async def browser_page(*, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A fresh tab in a fresh headless Chromium, closed afterwards."""
    from playwright.async_api import async_playwright

    executable = chromium_executable()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height}, locale="pl-PL")
            context.set_default_timeout(TIMEOUT_MS)
            yield await context.new_page()
        finally:
            await browser.close()
