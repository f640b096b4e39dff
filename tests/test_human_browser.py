"""The rating page driven in real headless Chromium (Selenium + Debian's chromium/chromedriver).

A missing browser is a failure (install it with scripts/install_browser.sh, which `make test` runs;
deselect with -m 'not browser').
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from sumrl.human import db as hdb
from conftest import start_chrome
from test_human_support import HTML_DOC, make_study, running_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    drv = start_chrome()
    try:
        yield drv
    finally:
        drv.quit()


def wait_for(drv, predicate, timeout: float = 10.0, what: str = "condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, poll_frequency=0.05).until(lambda d: predicate(d), message=what)


def keys(drv, *seq: str) -> None:
    """Type keys into the focused element (the page body): no mouse anywhere."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(drv).send_keys(*seq).perform()


def assignment_on_screen(drv) -> str | None:
    return drv.execute_script("return document.body.dataset.assignment || null")


def progress_text(drv) -> str:
    return drv.find_element("id", "progress-text").text


def judgments(db_path) -> list[sqlite3.Row]:
    conn = hdb.connect(db_path)
    try:
        return conn.execute(
            "SELECT j.assignment_id, j.choice, j.comment, a.left_is_a, a.position FROM judgments j "
            "JOIN assignments a ON a.assignment_id = j.assignment_id ORDER BY a.position").fetchall()
    finally:
        conn.close()


def ratings_of(db_path, assignment_id: int) -> dict[str, dict[str, int]]:
    """{left|right: {criterion: value}} as the rater saw the sides."""
    conn = hdb.connect(db_path)
    try:
        a = conn.execute("SELECT a.left_is_a, p.summary_a, p.summary_b FROM assignments a JOIN pairs p "
                         "ON p.pair_id = a.pair_id WHERE a.assignment_id = ?", (assignment_id,)).fetchone()
        left = a["summary_a"] if a["left_is_a"] else a["summary_b"]
        out: dict[str, dict[str, int]] = {"left": {}, "right": {}}
        for r in conn.execute("SELECT r.summary_id, r.criterion, r.value FROM ratings r JOIN judgments j "
                              "ON j.judgment_id = r.judgment_id WHERE j.assignment_id = ?", (assignment_id,)):
            out["left" if r["summary_id"] == left else "right"][r["criterion"]] = r["value"]
        return out
    finally:
        conn.close()


def test_rater_completes_all_assignments_with_the_keyboard_and_resumes(tmp_path, browser):
    from selenium.webdriver.common.keys import Keys

    db_path, tokens = make_study(tmp_path, raters=1, systems=("alpha", "beta"), n_docs=3)
    with running_server(db_path) as base:
        browser.get(f"{base}/r/{tokens['rater1']}")
        wait_for(browser, assignment_on_screen, what="first assignment")
        first = assignment_on_screen(browser)
        assert progress_text(browser) == "Item 1 of 3 (0 judged)"

        # Enter on an incomplete form saves nothing and says what is missing.
        keys(browser, "a", "5", Keys.ENTER)
        wait_for(browser, lambda d: "Still missing" in d.find_element("id", "status").text, what="missing msg")
        assert judgments(db_path) == []
        # Item 1: left better; J/K move between criteria: 8 ratings, then back up one and change it.
        keys(browser, Keys.ESCAPE)
        keys(browser, "k")  # active row was advanced to row 1 by the "5" above; go back to row 0
        keys(browser, "1", "2", "3", "4", "5", "6", "7", "1", "k", "6")  # the last row stays active; K = up
        keys(browser, Keys.ENTER)
        wait_for(browser, lambda d: assignment_on_screen(d) not in (None, first), what="second assignment")
        assert progress_text(browser) == "Item 2 of 3 (1 judged)"
        rows = judgments(db_path)
        assert len(rows) == 1 and rows[0]["choice"] == ("a" if rows[0]["left_is_a"] else "b")
        assert ratings_of(db_path, rows[0]["assignment_id"]) == {
            "left": {"accuracy": 1, "coverage": 2, "coherence": 3, "readability": 4},
            "right": {"accuracy": 5, "coverage": 6, "coherence": 6, "readability": 1}}

        # Reload: the page resumes at the first unjudged item, not at the start.
        second = assignment_on_screen(browser)
        browser.refresh()
        wait_for(browser, lambda d: assignment_on_screen(d) == second, what="resume at item 2")
        assert progress_text(browser) == "Item 2 of 3 (1 judged)"

        # Item 2: right better, with a comment typed after C and left with Esc.
        keys(browser, "d", "7", "7", "7", "7", "2", "2", "2", "2", "c", "Right one <b>misses</b> a point",
             Keys.ESCAPE, Keys.ENTER)
        wait_for(browser, lambda d: assignment_on_screen(d) not in (None, second), what="third assignment")
        # Item 3: a tie, submitted with Enter.
        keys(browser, "s", *"44444444", Keys.ENTER)
        wait_for(browser, lambda d: d.find_element("id", "done").is_displayed(), what="done screen")
        assert progress_text(browser) == "3 of 3 judged"
        assert not browser.find_element("id", "task").is_displayed()

        rows = judgments(db_path)
        assert len(rows) == 3
        assert rows[1]["choice"] == ("b" if rows[1]["left_is_a"] else "a")
        assert rows[1]["comment"] == "Right one <b>misses</b> a point"
        assert rows[2]["choice"] == "tie" and rows[2]["comment"] == ""
        assert ratings_of(db_path, rows[1]["assignment_id"])["right"]["readability"] == 2

        # Reloading after the end still shows "done" (nothing is offered twice).
        browser.refresh()
        wait_for(browser, lambda d: d.find_element("id", "done").is_displayed(), what="done after reload")


def test_html_in_documents_renders_as_literal_text(tmp_path, browser):
    from selenium.common.exceptions import NoAlertPresentException

    db_path, tokens = make_study(tmp_path, raters=1, systems=("alpha", "beta"), n_docs=1, html_doc=True)
    with running_server(db_path) as base:
        browser.get(f"{base}/r/{tokens['rater1']}")
        wait_for(browser, assignment_on_screen, what="assignment")
        time.sleep(0.3)  # give an (unwanted) onerror handler or script time to fire
        text = browser.execute_script("return document.getElementById('document').textContent")
        assert text.startswith(HTML_DOC)
        # No element was created from the document or summary text, and nothing executed.
        assert browser.execute_script(
            "return document.querySelectorAll('#document *, #left-text *, #right-text *').length") == 0
        assert "<i>tag</i>" in browser.find_element("id", "left-text").text
        assert browser.execute_script("return window.__pwned === undefined")
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text


def test_bad_link_shows_access_denied(tmp_path, browser):
    db_path, _ = make_study(tmp_path, raters=1, systems=("alpha", "beta"), n_docs=1)
    with running_server(db_path) as base:
        browser.get(f"{base}/r/not-a-valid-token")
        assert "Access denied" in browser.find_element("tag name", "h1").text


def test_long_document_scrolls_in_its_pane_with_the_keyboard(tmp_path, browser):
    from selenium.webdriver.common.keys import Keys

    from sumrl.human.study import candidate_pairs, create_study, load_runs, select_pairs
    from test_human_support import write_run

    long_doc = "\n\n".join(f"Paragraph {i}: " + "word " * 60 for i in range(600))  # ~200k characters
    runs = [write_run(tmp_path / s, s, [{"id": "long", "document": long_doc, "prediction": f"summary {s}"}])
            for s in ("alpha", "beta")]
    docs = load_runs(runs)
    st = create_study(tmp_path / "s.sqlite", docs, select_pairs(candidate_pairs(docs), docs), raters=["r"])
    with running_server(tmp_path / "s.sqlite") as base:
        browser.get(st.links["r"].replace("http://127.0.0.1:8765", base))
        wait_for(browser, assignment_on_screen, what="assignment")
        pane = "document.getElementById('document')"
        assert browser.execute_script(f"return {pane}.textContent.length") == len(long_doc)
        # The document scrolls inside its own pane; the page itself does not grow with it.
        assert browser.execute_script(f"return {pane}.scrollHeight > 20 * {pane}.clientHeight")
        assert browser.execute_script("return document.documentElement.scrollHeight <= window.innerHeight + 1")
        assert browser.execute_script(f"return {pane}.scrollTop") == 0
        keys(browser, " ", Keys.PAGE_DOWN)
        wait_for(browser, lambda d: d.execute_script(f"return {pane}.scrollTop") > 0, what="document scrolled")
        down = browser.execute_script(f"return {pane}.scrollTop")
        keys(browser, Keys.PAGE_UP)
        wait_for(browser, lambda d: d.execute_script(f"return {pane}.scrollTop") < down, what="scrolled back up")
