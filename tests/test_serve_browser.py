"""Issue 20 (6): the web page of `t2l serve` in a real headless Chromium (selenium + Debian's chromium-driver).

A real server on 127.0.0.1 with the tiny models: type a description, make the adapter (id + milliseconds shown),
send an input, see the base model's and the adapted model's streamed answers side by side and different, find the
adapter in the cached list with a working download link, see an error inline; a screenshot goes to tmp_path.
Install the browser with `make browser-deps` (apt: chromium chromium-driver; pip: selenium).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from serve_helpers import LiveServer, tiny_engine

INSTALL = "run `make browser-deps` (apt-get install -y chromium chromium-driver; pip install selenium)"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")

try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

pytestmark = pytest.mark.skipif(selenium is None or CHROMIUM is None or DRIVER is None,
                                reason=f"needs selenium, chromium and chromedriver: {INSTALL}")

DESCRIPTION = "Answer the question about the capital city of the given country."
PROMPT = "the capital of france"


@pytest.fixture(scope="module")
def server(tiny_checkpoint_dir):
    with LiveServer(tiny_engine(tiny_checkpoint_dir)) as srv:
        yield srv


def _get(srv: LiveServer, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(srv.url + path, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1400",
                "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _wait(drv, cond, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.1).until(cond)


def _text(drv, id_: str) -> str:
    return drv.find_element("id", id_).text


def test_page_makes_adapter_and_compares_answers(server, browser, tmp_path: Path):
    from selenium.webdriver.support import expected_conditions as ec

    drv = browser
    drv.get(server.url + "/")
    assert drv.title == "t2l serve"
    _wait(drv, lambda d: "serving" in _text(d, "server-status"))
    _, models = _get(server, "/v1/models")
    base_name = models["data"][0]["id"]
    assert base_name in _text(drv, "base-model-name")

    # 1. description -> "make adapter": id and milliseconds shown, matching the server's own record
    drv.find_element("id", "description").send_keys(DESCRIPTION)
    drv.find_element("id", "make-adapter").click()
    _wait(drv, ec.visibility_of_element_located(("id", "adapter-id")))
    adapter_id = _text(drv, "adapter-id")
    assert len(adapter_id) == 64 and int(adapter_id, 16) >= 0
    assert _text(drv, "adapter-ms").split()[0].replace(".", "", 1).isdigit()
    assert _text(drv, "adapter-error") == ""
    status, info = _get(server, f"/v1/adapters/{adapter_id}")
    assert status == 200 and info["description"] == DESCRIPTION

    # 2. an input -> both answers streamed side by side (greedy), and they differ
    prompt = drv.find_element("id", "prompt")
    prompt.send_keys(PROMPT)
    mt = drv.find_element("id", "max-tokens")
    mt.clear()
    mt.send_keys("12")
    drv.find_element("id", "send").click()
    _wait(drv, lambda d: all(d.find_element("id", i).get_attribute("data-done") == "1" for i in ("answer-base", "answer-adapted")))
    base, adapted = _text(drv, "answer-base"), _text(drv, "answer-adapted")
    assert _text(drv, "chat-error") == ""
    assert base.strip() and adapted.strip(), (base, adapted)
    assert base != adapted, f"the adapter did not change the answer: {base!r}"
    assert adapter_id in _text(drv, "adapted-model-name")

    # the page showed what the API answers for the same greedy requests (streaming did not lose or reorder text)
    for model, shown in ((base_name, base), (f"t2l:{adapter_id}", adapted)):
        req = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12, "temperature": 0}
        r = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(req).encode(),
                                   headers={"content-type": "application/json"})
        with urllib.request.urlopen(r, timeout=60) as resp:
            answer = json.loads(resp.read())["choices"][0]["message"]["content"]
        assert shown == answer.strip() or shown == answer, (model, shown, answer)

    # 3. the cached list has the adapter with a download link that yields the PEFT folder
    _wait(drv, lambda d: d.find_elements("css selector", f'#adapters-list tr[data-id="{adapter_id}"]'))
    link = drv.find_element("css selector", f'#adapters-list tr[data-id="{adapter_id}"] a.download')
    href = link.get_attribute("href")
    assert href == f"{server.url}/v1/adapters/{adapter_id}/download"
    with urllib.request.urlopen(href, timeout=60) as resp:
        names = zipfile.ZipFile(BytesIO(resp.read())).namelist()
    assert any(n.endswith("adapter_model.safetensors") for n in names) and any(n.endswith("adapter_config.json") for n in names)

    shot = tmp_path / "serve_page.png"
    drv.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # 4. errors show inline: a description with nothing visible is refused by the server with one clear message
    desc = drv.find_element("id", "description")
    desc.clear()
    desc.send_keys("\u200b\u200b")
    drv.find_element("id", "make-adapter").click()
    _wait(drv, lambda d: _text(d, "adapter-error") != "")
    err = _text(drv, "adapter-error")
    assert "(400)" in err and "description" in err, err
    assert drv.find_elements("id", "adapter-id") == []
