"""The web page in a real browser: Debian's headless Chromium driven by Playwright (nothing downloaded).

At 360 px wide, the page loads the models, takes a prompt, moves the guidance slider by keyboard, generates,
shows the progress and a preview, and fills the result grid with each image's seed and a download link; the
text tab shows the masks filling in. Screenshots go to ``$EBRU_TEST_ARTEFACTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from ebru.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make install "
                                                         "installs it: apt-get install chromium)")


@pytest.fixture(scope="module")
def page_server(models, state, serve):
    return serve(create_app([models["t2i"], models["chars"], models["cond"]], out_dir=state / "out"))


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def artefacts(tmp_path: Path) -> Path:
    d = Path(os.environ.get("EBRU_TEST_ARTEFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_the_page_generates_images_with_progress_at_360_px(page_server, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 360, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(page_server.url) or r.url.startswith(("data:", "blob:"))
            else problems.append("fetched from elsewhere: " + r.url))
    page.goto(page_server.url + "/")
    expect(page.locator("#status")).to_contain_text("model(s) ready")  # locators: the page's CSP forbids eval
    assert page.input_value("#model") == "t2i"
    page.fill("#prompt", "a red square")
    page.focus("#guidance")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.input_value("#guidance") == "4" and page.text_content("#guidance-value") == "4"
    page.fill("#steps", "3")
    page.fill("#n", "2")
    page.uncheck("#random")
    page.fill("#seed", "21")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")  # keyboard: submit from the prompt
    expect(page.locator("#results figure")).to_have_count(2, timeout=30_000)
    assert page.text_content("#progress-text") == "step 3 / 3"
    assert page.get_attribute("#preview", "src").startswith("data:image/png;base64,")
    captions = page.locator("#results figcaption").all_text_contents()
    assert [re.search(r"seed (\d+)", c).group(1) for c in captions] == ["21", "22"]  # in seed order
    assert all("guidance 4" in c and "3 steps" in c and "a red square" in c for c in captions)
    sizes = page.eval_on_selector_all("#results img", "els => els.map(e => [e.complete, e.naturalWidth])")
    assert sizes == [[True, 8], [True, 8]]
    links = page.eval_on_selector_all("#results a[download]", "els => els.map(e => e.getAttribute('download'))")
    assert links == ["sample-a_red_square-seed0021.png", "sample-a_red_square-seed0022.png"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling at 360 px
    page.screenshot(path=str(artefacts(tmp_path) / "serve-page-images.png"), full_page=True)
    assert problems == []


def test_the_text_tab_shows_the_masks_filling_in(page_server, browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 360, "height": 900})
    page.goto(page_server.url + "/")
    expect(page.locator("#status")).to_contain_text("model(s) ready")  # locators: the page's CSP forbids eval
    page.click("#tab-text")
    assert page.input_value("#model") == "chars" and page.is_visible("#panel-text")
    page.fill("#length", "12")
    page.fill("#text-steps", "4")
    page.fill("#text-seed", "7")
    page.click("#text-generate")
    expect(page.locator("#text-results pre")).to_have_count(1, timeout=30_000)
    assert page.text_content("#text-progress") == "step 4 / 4"
    model = page_server.app.state.server.models["chars"].pipe
    want = model.generate(1, 12, "", steps=4, seeds=[7]).texts[0]
    assert page.text_content("#text-results pre") == f"seed 7: {want}"
    assert page.text_content("#text-live") == want  # the last step's frame: every mask filled in
    page.screenshot(path=str(artefacts(tmp_path) / "serve-page-text.png"), full_page=True)


def test_a_class_job_s_captions_name_each_image_s_class_and_the_model_that_drew_it(page_server, browser):
    """Before: a class job's captions named no class ("all, in turn" gave each image another), and named the model
    picked when the images arrived, not the one that drew them."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 360, "height": 900})
    page.goto(page_server.url + "/")
    expect(page.locator("#status")).to_contain_text("model(s) ready")
    page.select_option("#model", "cond")
    assert page.is_visible("#class-box") and not page.is_visible("#prompt-box")
    page.fill("#steps", "40")
    page.fill("#n", "3")
    page.uncheck("#random")
    page.fill("#seed", "0")
    page.click("#generate")
    page.select_option("#model", "t2i")  # while the job runs
    expect(page.locator("#results figure")).to_have_count(3, timeout=30_000)
    captions = page.locator("#results figcaption").all_text_contents()
    assert [c.split(" (")[0] for c in captions] == ["seed 0 - T-shirt/top", "seed 1 - Sneaker", "seed 2 - Bag"]
    assert all("(cond, " in c for c in captions), captions


def test_on_a_server_with_tokens_the_page_says_where_the_token_goes(models, state, serve, browser, tmp_path):
    """Before: the page showed the API's curl advice ("send 'Authorization: Bearer <token>'") and nothing more."""
    from playwright.sync_api import expect

    from ebru.serve.auth import add_token

    token = add_token(tmp_path / "tokens.json", "ana")
    locked = serve(create_app([models["cond"]], tmp_path / "tokens.json", out_dir=state / "out-locked"))
    page = browser.new_page(viewport={"width": 360, "height": 900})
    page.goto(locked.url + "/")
    expect(page.locator("#status")).to_contain_text("Enter your token in the Token box above")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(token)
    page.keyboard.press("Tab")  # the change event: the page tries again with the token
    expect(page.locator("#status")).to_have_text("1 model(s) ready")
    page.fill("#token", "ebru-00000000-" + "A" * 43)
    page.keyboard.press("Tab")
    expect(page.locator("#status")).to_contain_text(re.compile(r"token refused.*Token box above"))
