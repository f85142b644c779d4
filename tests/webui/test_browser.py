"""One real browser run: Playwright drives Debian's chromium (headless) through the app.

Screenshots of each tab go to ``tests/artifacts/``; with ``STUDIO_SCREENSHOTS=1`` they also
replace the README's ``docs/screenshots/*.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
DOCS = ROOT / "docs" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.slow


def _find_chromium() -> str | None:
    return shutil.which("chromium") or next(
        (p for p in ("/usr/bin/chromium",) if Path(p).is_file()), None
    )


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and running as root."""
    path = _find_chromium()
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium"],
        ):
            subprocess.run(command, check=False, capture_output=True, timeout=600)
        path = _find_chromium()
    if path is None:
        pytest.skip(
            "chromium is not installed and cannot be here (installing needs root and apt-get): "
            "run `apt-get install chromium` to enable the browser test"
        )
    return path


@pytest.fixture
def page(chromium) -> Iterator:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        sync_api.expect.set_options(timeout=TIMEOUT_MS)
        yield page
        browser.close()


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    if os.environ.get("STUDIO_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / f"{name}.png", DOCS / f"{name}.png")


def test_create_a_profile_by_upload_and_generate_in_a_browser(page, served, faces_dir):
    from playwright.sync_api import expect

    page.goto(served)
    expect(page.locator("#banner")).to_contain_text("python -m studio models fetch sd15")

    # Profiles: upload, confirm consent, create, see the verdicts and the crops
    page.locator("#profile-name textarea, #profile-name input").first.fill("Ivy")
    photos = [faces_dir / name for name in ("person_a_1.jpg", "person_a_2.jpg", "impostor_1.jpg")]
    page.locator("#profile-photos input[type=file]").set_input_files(photos)
    expect(page.get_by_role("row", name="impostor_1.jpg")).to_be_visible()  # uploaded
    page.locator("#profile-consent input[type=checkbox]").check()
    page.locator("#profile-create").click()
    verdicts = page.locator("#profile-verdicts")
    expect(verdicts).to_contain_text("does not match the other photos")
    expect(verdicts).to_contain_text("person_a_2.jpg")
    expect(page.locator("#profile-crops img")).to_have_count(2)
    _screenshot(page, "profiles")

    # Train: a short run of the new profile, its status and curves polled live
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-status")).to_contain_text("No training of Ivy")
    train_steps = page.locator("#train-steps input[type=number]")
    train_steps.fill("3")
    train_steps.press("Enter")
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("Finished Ivy after 3 steps")
    expect(page.locator("#train-loss .vega-embed svg")).to_be_visible()
    _screenshot(page, "train")

    # Generate (with the new LoRA): the profile is chosen already; a style, few steps, go
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#gen-profile input")).to_have_value("Ivy")
    page.locator("#gen-style").get_by_text("Film noir").click()
    expect(page.locator("#gen-style-info")).to_contain_text("Film noir")
    steps = page.locator("#gen-steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#gen-run").click()
    expect(page.locator("#gen-gallery img").first).to_be_visible()
    expect(page.locator("#gen-gallery")).to_contain_text("seed 0")
    seed = page.locator("#gen-seed input")
    seed.fill("9")
    page.locator("#gen-gallery img").first.click()  # reuse its seed
    expect(seed).to_have_value("0")
    # W+: move the age slider and preview the edited face beside the profile photo
    age = page.locator("#gen-edit-age input[type=number]")
    age.fill("2")
    age.press("Enter")
    page.locator("#gen-wplus-run").click()
    expect(page.locator("#gen-wplus-photo img")).to_be_visible()
    expect(page.locator("#gen-wplus-preview img")).to_be_visible()
    _screenshot(page, "generate")

    # History: the new portrait and its parameters
    page.get_by_role("tab", name="History").click()
    expect(page.locator("#history-gallery img").first).to_be_visible()
    expect(page.locator("#history-gallery")).to_contain_text("Ivy · film-noir · seed 0")
    page.locator("#history-gallery img").first.click()
    expect(page.locator("#history-details")).to_contain_text("film-noir")
    _screenshot(page, "history")
