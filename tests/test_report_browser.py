"""The report opened in real headless Chromium (Selenium + Debian's chromium/chromedriver, the same
driver choice as tests/test_human_browser.py): it renders, the tables and plots are there, text
from documents stays text, and no request leaves the page.

Requests are read from Chrome's DevTools performance log (every ``Network.requestWillBeSent``);
Content-Security-Policy violations from the console log, so a request the page's CSP blocked
(and which therefore never reaches the network log) still fails the test. A missing browser is
a failure (install it with scripts/install_browser.sh, which `make test` runs).
"""

from __future__ import annotations

import json

import pytest

from sumrl.report import build_report
from conftest import start_chrome
from test_report_support import make_runs, make_train_runs

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    drv = start_chrome(extra_args=(
        # no background traffic of the browser's own (updates, safe browsing...) in the log
        "--disable-background-networking", "--disable-component-update"),
        capabilities={"goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}})
    try:
        yield drv
    finally:
        drv.quit()


def open_page(drv, url: str) -> None:
    drv.get_log("performance")  # reading a log empties it: start from this page only
    drv.get_log("browser")
    drv.get(url)
    drv.execute_script("return document.readyState")  # get() returns after the load event


def requested_urls(drv) -> list[str]:
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def foreign_requests(urls: list[str], page_url: str) -> list[str]:
    return [u for u in urls if u != page_url and not u.startswith("data:")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-browser")
    runs = make_runs(root)
    train = make_train_runs(root)
    return build_report(runs, root / "report.html", train_runs=train, n_examples=4, n_bootstrap=200)


@pytest.fixture(scope="module")
def loaded(browser, report):
    url = report.resolve().as_uri()
    open_page(browser, url)
    return browser, url, requested_urls(browser), browser.get_log("browser")


def test_report_renders_tables(loaded):
    drv, *_ = loaded
    assert drv.title == "sumrl report: base, sft, rl-ppo"
    heads = drv.execute_script(
        "return [...document.querySelectorAll('#comparison-table thead th[data-system]')].map(e => e.dataset.system)")
    assert heads == ["base", "sft", "rl-ppo"]
    metrics = drv.execute_script(
        "return [...document.querySelectorAll('#comparison-table tbody tr')].map(e => e.dataset.metric)")
    assert {"rouge1_f", "rouge2_f", "rougeL_f", "la_rougeL", "extra_words_pos", "hallucination_rate"} <= set(metrics)
    # every data row has one cell per system + metric name + description, and is visible
    widths = drv.execute_script(
        "return [...document.querySelectorAll('#comparison-table tbody tr')].map(r => r.cells.length)")
    assert set(widths) == {5}
    assert drv.execute_script("return document.querySelector('#comparison-table').getBoundingClientRect().height") > 100
    tip = drv.execute_script("return document.querySelector('#comparison-table tr[data-metric=rouge1_f] .metric').title")
    assert tip.startswith("ROUGE-1 F1")
    paired = drv.execute_script(
        "return [...document.querySelectorAll('.paired-table')].map(t => [t.dataset.rl, t.dataset.baseline, t.rows.length])")
    assert len(paired) == 1 and paired[0][:2] == ["rl-ppo", "sft"] and paired[0][2] >= 8
    extra = drv.execute_script(
        "return [...document.querySelectorAll('#extra-length-table tbody tr')].map(r => r.dataset.system)")
    assert extra == ["base", "sft", "rl-ppo"]


def test_plots_decode(loaded):
    drv, *_ = loaded
    imgs = drv.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
    assert len(imgs) == 5  # reward, KL, mean length, SFT val loss, length distribution
    for complete, w, h, src in imgs:
        assert complete and w > 100 and h > 100 and src == "data:image/png;base64,"


def test_document_html_renders_as_text(loaded):
    drv, *_ = loaded
    assert drv.execute_script("return window.__pwned === undefined")
    assert drv.execute_script("return document.querySelectorAll('script').length") == 0
    src_text = drv.execute_script("return document.querySelector('article[data-id=d1] .source .text').textContent")
    assert "<script>window.__pwned = 1</script>" in src_text
    assert '<img src="http://127.0.0.1:9/leak.png"' in src_text
    summary = drv.execute_script(
        "return document.querySelector('article[data-id=d1] .summary[data-system=base] .text').textContent")
    assert summary.endswith("<script>window.__pwned = 3</script>")
    marks = drv.execute_script(
        "return [...document.querySelectorAll('article[data-id=d1] .summary[data-system=base] mark.m-hall')]"
        ".map(m => m.textContent)")
    assert "7" in marks and "Governor Smith" in marks
    assert drv.execute_script("return document.querySelectorAll('#legend mark').length") == 2


def test_no_request_leaves_the_page(loaded):
    _, url, urls, console = loaded
    assert url in urls  # the log works: the page itself was seen
    assert foreign_requests(urls, url) == []
    csp = [e["message"] for e in console if "Content Security Policy" in e["message"]]
    assert csp == []  # nothing on the page even tried a blocked fetch


def test_request_check_catches_an_external_asset(browser, tmp_path):
    # Negative control: the same check on a page that does load a remote image must flag it,
    # else an empty request list above would prove nothing.
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><p>x</p><img src="http://127.0.0.1:9/pixel.png">', encoding="utf-8")
    url = page.resolve().as_uri()
    open_page(browser, url)
    assert foreign_requests(requested_urls(browser), url) == ["http://127.0.0.1:9/pixel.png"]
