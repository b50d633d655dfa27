"""The chat page at ``/`` in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, cli_env
from tests.fakes.openai_chat import FakeOpenAIChat
from tests.serve.running import Served, serve

webdriver = pytest.importorskip("selenium.webdriver")

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="needs chromium and chromium-driver (make install-test)")]


@contextlib.contextmanager
def chromium(*extra: str) -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="infermux-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *extra,
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def wait_for(condition: Callable[[], Any], timeout: float = 300, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout:.0f}s")


def bubbles(driver: Any, role: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"#log .msg.{role}")]


def say(driver: Any, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def set_field(driver: Any, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def test_streams_an_answer_and_shows_tokens_per_second(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with serve() as served:  # the default model on LLAMACPP
        browser.get(served.url + "/")
        wait_for(lambda: "smollm2" in browser.find_element(By.ID, "model").text, timeout=60)
        set_field(browser, "max_tokens", "120")
        say(browser, "Write a long story about a cat.")
        # Text shows while the answer is still being generated (the Stop button is live): it streams.
        partial = wait_for(
            lambda: (bubbles(browser, "assistant") or [""])[-1] and browser.find_element(By.ID, "stop").is_enabled()
        )
        assert partial
        status = wait_for(lambda: browser.find_element(By.ID, "status").get_attribute("data-done") == "2", timeout=600)
        assert status
        text = browser.find_element(By.ID, "status").text
        assert "tokens/s" in text and "first token" in text
        assert not bubbles(browser, "error")


def test_multi_turn_history_system_prompt_and_api_key(browser: Any) -> None:
    key = "gw-browser-key-4242"
    with FakeOpenAIChat(api_key="sk-up-1234567890") as fake:
        assert isinstance(fake, FakeOpenAIChat)
        args = ("--engine", "REMOTE", "--model.model_name", "gpt-fake", "--remote_params.api_url", fake.url + "/v1",
                "--remote_params.api_key", "sk-up-1234567890")  # fmt: skip
        with serve(*args, env=cli_env(INFERMUX_API_KEY=key), timeout=120) as served:
            _chat_twice(browser, served, key)
            assert "sk-up-1234567890" not in browser.page_source


def _chat_twice(browser: Any, served: Served, key: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/")
    wait_for(lambda: "could not list models" in browser.find_element(By.ID, "model").text, timeout=60)
    set_field(browser, "api_key", key)
    browser.find_element(By.ID, "system").click()  # leaving the key field fires its change event
    wait_for(lambda: "gpt-fake" in browser.find_element(By.ID, "model").text, timeout=60)
    set_field(browser, "system", "Be terse.")
    say(browser, "My name is Ada.")
    wait_for(lambda: browser.find_element(By.ID, "status").get_attribute("data-done") == "2")
    say(browser, "What is my name?")
    wait_for(lambda: browser.find_element(By.ID, "status").get_attribute("data-done") == "4")
    answers = bubbles(browser, "assistant")
    assert answers[0] == "system=Be terse. | turns=1 | images=0 | last=My name is Ada."
    assert answers[1] == "system=Be terse. | turns=3 | images=0 | last=What is my name?"  # history was sent
    assert bubbles(browser, "user") == ["My name is Ada.", "What is my name?"]
    browser.find_element(By.ID, "reset").click()
    assert bubbles(browser, "assistant") == []
    say(browser, "Fresh start.")
    wait_for(lambda: browser.find_element(By.ID, "status").get_attribute("data-done") == "2")
    assert bubbles(browser, "assistant")[-1].endswith("turns=1 | images=0 | last=Fresh start.")


# ---------------------------------------------------------------------- pages on other sites

UPSTREAM_KEY = "sk-up-1234567890"
GATEWAY = ("--engine", "REMOTE", "--model.model_name", "gpt-fake", "--remote_params.api_key", UPSTREAM_KEY)

# Run in a page of another site: what such a page can try against the server at arguments[0].
ATTACKS = """
const [base, done] = [arguments[0], arguments[arguments.length - 1]];
const chat = JSON.stringify({model: "gpt-fake", messages: [{role: "user", content: "spend credit"}]});
const outcome = (p) => p.then(async (r) => r.type === "opaque" ? "sent" : `read ${r.status}: ${await r.text()}`,
                              (e) => `blocked: ${e.name}`);
Promise.all([
  outcome(fetch(base + "/v1/chat/completions",  // a "simple" request: no preflight, the answer unreadable
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: chat})),
  outcome(fetch(base + "/v1/chat/completions",  // JSON: the browser asks first (preflight)
                {method: "POST", headers: {"Content-Type": "application/json"}, body: chat})),
  outcome(fetch(base + "/metrics")),
]).then(done);
"""


@contextlib.contextmanager
def other_site() -> Iterator[str]:
    """A page on another origin (another port of 127.0.0.1): what a site the user opens looks like."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>another site</title><p>hello"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def metric(served: Served, line_start: str) -> float:
    import urllib.request

    with urllib.request.urlopen(served.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_pages_on_other_sites_and_rebound_names_cannot_drive_the_server() -> None:
    with FakeOpenAIChat(api_key=UPSTREAM_KEY) as fake, other_site() as site:
        assert isinstance(fake, FakeOpenAIChat)
        with (
            serve(*GATEWAY, "--remote_params.api_url", fake.url + "/v1", timeout=120) as served,
            chromium("--host-resolver-rules=MAP rebind.test 127.0.0.1") as browser,
        ):
            browser.get(site + "/")
            sent, preflighted, metrics = browser.execute_async_script(ATTACKS, served.url)
            assert sent == "sent"  # the browser sent it; the server refused it (below)
            assert preflighted.startswith("blocked") and metrics.startswith("blocked")
            # DNS rebinding: a page whose own name now points at the server, so its requests are "same-origin".
            port = served.url.rsplit(":", 1)[1]
            browser.get(f"http://rebind.test:{port}/")
            assert "host_not_allowed" in browser.page_source
            rebound = browser.execute_async_script(ATTACKS, f"http://rebind.test:{port}")
            assert all("host_not_allowed" in r or r.startswith(("blocked", "sent")) for r in rebound), rebound
            assert "read 200" not in "".join(rebound)
            assert not fake.requests, "a page's request reached the upstream"
            assert metric(served, "infermux_requests_total") == 0
            assert metric(served, 'infermux_errors_total{status="403"}') >= 5
            assert "infermux" not in "".join(rebound[2:])  # no metrics were read
        # The same page may use a server that lists its origin (CORS allow-list).
        args = (*GATEWAY, "--remote_params.api_url", fake.url + "/v1", "--cors-origin", site)
        with serve(*args, timeout=120) as served, chromium() as browser:
            browser.get(site + "/")
            sent, allowed, metrics = browser.execute_async_script(ATTACKS, served.url)
            assert allowed.startswith("read 200") and "chat.completion" in allowed, allowed
            assert metrics.startswith("read 200") and "infermux_requests_total" in metrics
            assert sent == "sent" and metric(served, 'infermux_errors_total{status="415"}') == 1  # text/plain: refused
            assert len(fake.requests) == 1


# ---------------------------------------------------------------------------- first hour: layout, hint, markdown
#: An answer with Markdown and HTML a hostile or confused model could write: the HTML must stay text.
MARKDOWN_ANSWER = (
    "## Steps\n\n1. Install **infermux**\n2. Run `infermux chat`\n\n- one\n- two\n\n"
    "```python\nprint('<b>hi</b>')\n```\n\n"
    "Done <img src=x onerror=\"document.title='pwned'\"> <script>document.title='pwned'</script> "
    "[docs](https://example.org/docs) [bad](javascript:alert(1))"
)
SHOTS = ROOT / "tests" / "serve" / "screenshots"  # written for a person to look at; not committed


def _page_at(browser: Any, url: str, width: int, height: int) -> None:
    browser.set_window_size(width, height)
    browser.get(url)
    wait_for(lambda: "gpt-fake" in browser.find_element("id", "model").text, timeout=60)


def _layout(browser: Any) -> dict[str, Any]:
    """Where the page's parts are, measured in the browser."""
    return browser.execute_script(
        "const r = (id) => document.getElementById(id).getBoundingClientRect();"
        "return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,"
        " settings: r('settings'), input: r('input'), send: r('send'), empty: r('empty'),"
        " emptyShown: !document.getElementById('empty').hidden, optionsOpen: document.getElementById('options').open};"
    )


@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 800)])
def test_layout_empty_hint_markdown_and_timing_at_phone_and_desktop_width(
    browser: Any, width: int, height: int
) -> None:
    from selenium.webdriver.common.by import By

    with FakeOpenAIChat(lambda exchange: MARKDOWN_ANSWER) as fake:
        assert isinstance(fake, FakeOpenAIChat)
        args = ("--engine", "REMOTE", "--model.model_name", "gpt-fake", "--remote_params.api_url", fake.url + "/v1")
        with serve(*args, timeout=120) as served:
            _page_at(browser, served.url + "/", width, height)
            SHOTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(SHOTS / f"empty-{width}.png"))
            layout = _layout(browser)
            assert layout["scrollWidth"] <= layout["innerWidth"], "the page must not scroll sideways"
            assert layout["emptyShown"] and "Ask the model anything" in browser.find_element(By.ID, "empty").text
            assert layout["input"]["width"] >= 0.5 * width, "the message box gets most of the width"
            assert layout["send"]["right"] <= width
            if width < 700:  # phone: the settings fold into a bar above the conversation
                assert not layout["optionsOpen"] and layout["settings"]["height"] < 0.25 * height
                assert layout["settings"]["width"] >= width - 1
            else:
                assert layout["optionsOpen"] and layout["settings"]["width"] < 0.3 * width
            assert browser.find_element(By.ID, "temperature").get_attribute("value") == ""  # not 0
            assert browser.find_element(By.ID, "temperature").get_attribute("placeholder") == "0.7 (server default)"

            for turn in (1, 2):
                say(browser, f"Question {turn}?")
                wait_for(
                    lambda turn=turn: browser.find_element(By.ID, "status").get_attribute("data-done") == str(2 * turn)
                )
            browser.save_screenshot(str(SHOTS / f"answered-{width}.png"))
            sent = fake.requests[-1].json
            assert sent["temperature"] == 0.7 and sent["frequency_penalty"] == 0.3  # serve's preset, as the chat's

            answer = browser.find_elements(By.CSS_SELECTOR, "#log .msg.assistant")[-1]
            assert [h.text for h in answer.find_elements(By.TAG_NAME, "h3")] == ["Steps"]
            assert [li.text for li in answer.find_elements(By.CSS_SELECTOR, "ol li")] == [
                "Install infermux", "Run infermux chat"
            ]  # fmt: skip
            assert [li.text for li in answer.find_elements(By.CSS_SELECTOR, "ul li")] == ["one", "two"]
            assert answer.find_element(By.CSS_SELECTOR, "pre code").text == "print('<b>hi</b>')"
            assert answer.find_element(By.CSS_SELECTOR, "strong").text == "infermux"
            links = answer.find_elements(By.TAG_NAME, "a")
            assert [a.get_attribute("href") for a in links] == ["https://example.org/docs"]
            assert not answer.find_elements(By.CSS_SELECTOR, "img, script, b")  # HTML shown as text, never run
            assert "<img src=x" in answer.text and "<script>" in answer.text
            assert browser.title == "infermux chat"

            assert browser.find_element(By.ID, "status").text.startswith("this chat: 2 answers · 46 tokens · ")
            metas = browser.find_elements(By.CSS_SELECTOR, "#log .meta")
            assert len(metas) == 2, "a timing line under each answer"
            assert all("first token" in m.text and m.text.endswith(" s") for m in metas)
            layout = _layout(browser)
            assert layout["scrollWidth"] <= layout["innerWidth"] and not layout["emptyShown"]
            browser.find_element(By.ID, "reset").click()
            assert _layout(browser)["emptyShown"]
