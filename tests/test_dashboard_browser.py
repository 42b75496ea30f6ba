"""End to end: `python -m leaderboard serve` on a free localhost port, rendered by headless Chromium.

Chromium is driven through the DevTools protocol over a pipe (--remote-debugging-pipe: JSON messages,
NUL-terminated, on the child's fds 3 and 4), so no driver binary or Python browser package is needed.
Streamlit fills the page over a websocket after load, so the test polls the rendered DOM until the seeded
entries appear, then saves a screenshot next to the test's other files.

Without Chromium the test skips; with NANORESEARCH_REQUIRE_BROWSER=1 (CI: scripts/ci_chromium.sh) a
missing browser fails it.
"""

import base64
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_dashboard import APP, seed

REQUIRE_BROWSER = os.environ.get("NANORESEARCH_REQUIRE_BROWSER") == "1"
SERVER_START_S = 60
RENDER_S = 60


@pytest.fixture
def chromium() -> str:
    """The browser binary; asked for before the server fixture so that a skip costs no server start."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    message = "Chromium not found: install Debian's chromium (scripts/ci_chromium.sh)"
    if REQUIRE_BROWSER:
        pytest.fail(f"NANORESEARCH_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, chromium: str, user_data_dir: Path, log: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # The child must find the pipe ends at fds 3 (commands in) and 4 (replies out). Duplicate them
        # above any fd the dup2 calls below could clobber, then place them in the child before exec.
        high_r = os.dup2(to_chrome_r, 100, inheritable=False)
        high_w = os.dup2(from_chrome_w, 101, inheritable=False)

        def place_fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "--no-first-run",
                 "--no-default-browser-check", "--window-size=1400,1000", "about:blank"]
        with open(log, "wb") as out:
            self.process = subprocess.Popen([chromium, *flags], stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=place_fds, close_fds=False)
        for fd in (to_chrome_r, from_chrome_w, high_r, high_w):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:  # anything else is an event: not needed here
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"no DevTools reply to {method} in {timeout} s")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed its DevTools pipe (exit code {self.process.poll()})")
            self._buffer += chunk

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@contextmanager
def serving(db: str, tmp_path: Path):
    """`python -m leaderboard serve` on a free port, started outside the repository (the documented command must find
    the app and bind to 127.0.0.1 by itself); yields (port, server process) once it answers its health check."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {**{k: v for k, v in os.environ.items() if k != "NANORESEARCH_DB"}, "NANORESEARCH_HOME": str(tmp_path / "home")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP.parents[1]), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "leaderboard", "serve", "--port", str(port), "--db", db]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not serve on port {port} (exit {server.poll()}): {log.read_text()[-2000:]}")
            time.sleep(0.25)
        yield port, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def dashboard(tmp_path):
    """The dashboard served on a free localhost port, on a seeded SQLite database; yields its URL."""
    db = f"sqlite:///{tmp_path / 'seeded.db'}"
    seed(db)
    with serving(db, tmp_path) as (port, _):
        yield f"http://127.0.0.1:{port}/"


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (Linux: /proc/net/tcp and tcp6), as hex."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_serve_starts_from_any_directory_on_localhost_only(tmp_path):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read listening sockets from")
    db = f"sqlite:///{tmp_path / 'seeded.db'}"
    seed(db)
    with serving(db, tmp_path) as (port, server):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        # 0100007F is 127.0.0.1 in /proc's byte order; 0.0.0.0 or :: would serve the network.
        assert listening_addresses(port) == {"0100007F"}
    # Stopping the command stopped the server itself: no Streamlit child is left listening behind it.
    assert not listening_addresses(port)


def test_serve_rejects_a_bad_port():
    done = subprocess.run([sys.executable, "-m", "leaderboard", "serve", "--port", "70000"], capture_output=True,
                          text=True, cwd=APP.parents[1], timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "error: --port 70000: expected a TCP port, 1 to 65535"


def page_text(chromium: str, url: str, wanted: list[str], tmp_path: Path, screenshot: Path, show: str | None = None) -> str:
    """The page's text once every `wanted` string is in it (or after RENDER_S), with a screenshot saved (scrolled to
    the heading `show` when given).
    Streamlit fills the page over its websocket after load, and its grid paints cells on a canvas mirrored in an
    accessibility table, hence polling textContent (which includes that table) rather than innerText."""
    browser = DevTools(chromium, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    text = ""
    try:
        target = browser.send("Target.createTarget", {"url": url})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + RENDER_S
        while time.monotonic() < deadline:
            result = browser.send("Runtime.evaluate", {"expression": "document.body ? document.body.textContent : ''",
                                                       "returnByValue": True}, session)
            text = result["result"].get("value") or ""
            if all(w in text for w in wanted):
                break
            time.sleep(0.5)
        if show:
            browser.send("Runtime.evaluate", {"expression": "[...document.querySelectorAll('h1,h2,h3')].find(h => "
                                              f"h.textContent.includes({json.dumps(show)}))?.scrollIntoView()"}, session)
            time.sleep(2)  # charts scrolled into view render lazily
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    return text


def test_leaderboard_page_renders_seeded_entries_in_chromium(chromium, dashboard, tmp_path):
    screenshot = tmp_path / "leaderboard.png"
    wanted = ["smear d24", "2.70 ± 0.03", "0.2601 ± 0.0012", "nanochat d24 reference", "nanochat README",
              "3.00", "backout d24", "3.20 ± 0.05", "never reached the target"]
    text = page_text(chromium, dashboard + "?track=gpt2-speedrun", wanted, tmp_path, screenshot)
    where = f"(screenshot: {screenshot}; page text: {text[:1500]!r})"
    assert all(w in text for w in wanted), f"seeded entries not rendered within {RENDER_S} s {where}"
    ranked = ["smear d24", "nanochat d24 reference", "backout d24", "never reached the target"]
    assert sorted(ranked, key=text.index) == ranked, f"entries not in time-to-target order {where}"
    assert "Cannot read the database" not in text and "Traceback" not in text, where
    assert screenshot.stat().st_size > 10_000, f"blank screenshot? {where}"


def test_benchmark_page_renders_a_report_in_chromium(chromium, dashboard, tmp_path):
    from tests.test_benchmark import sample_report
    sample_report(tmp_path / "home" / "benchmarks" / "demo")
    screenshot = tmp_path / "benchmark.png"
    wanted = ["The pool's truth", "-0.0900 ± 0.0030", "not run: a null by construction", "Proposers and decision rules",
              "false at 1st rung", "greedy", "fixed_t", "Discovery: ladder", "discovery.png", "outcomes.png"]
    text = page_text(chromium, dashboard + "benchmark?report=demo", wanted, tmp_path, screenshot)
    where = f"(screenshot: {screenshot}; page text: {text[:1500]!r})"
    assert all(w in text for w in wanted), f"the report not rendered within {RENDER_S} s {where}"
    assert "Traceback" not in text and "Cannot read" not in text, where
    assert screenshot.stat().st_size > 10_000, f"blank screenshot? {where}"


def test_search_page_says_why_each_decision_was_made_in_chromium(chromium, dashboard, tmp_path):
    from tests.test_dashboard import SMEAR_WHY
    screenshot = tmp_path / "search.png"
    wanted = ["Promotion decisions", "promoted to d4", SMEAR_WHY, "The numbers behind each decision"]
    text = page_text(chromium, dashboard + "search?search=cpu-search", wanted, tmp_path, screenshot)
    where = f"(screenshot: {screenshot}; page text: {text[:1500]!r})"
    assert all(w in text for w in wanted), f"the decisions' reasons not rendered within {RENDER_S} s {where}"
    assert "Traceback" not in text and "Cannot read" not in text, where


def test_best_so_far_ignores_a_lucky_baseline_seed_in_chromium(chromium, tmp_path):
    """The Best so far charts' value axis holds only smear's promoted -0.05: the lucky seed (val_bpb 1.00, far below
    every run) moved nothing, where a best of raw val_bpb, or of any run's difference, would have added values."""
    from tests.test_dashboard import add_lucky_baseline_seed
    db = f"sqlite:///{tmp_path / 'lucky.db'}"
    seed(db)
    add_lucky_baseline_seed(db)
    screenshot = tmp_path / "best-so-far.png"
    with serving(db, tmp_path) as (port, _):
        text = page_text(chromium, f"http://127.0.0.1:{port}/search?search=cpu-search",
                         ["Best so far", "best promoted change so far (mean d, bpb)", "compute so far"], tmp_path,
                         screenshot, show="Best so far")
    where = f"(screenshot: {screenshot}; page text: {text[:1500]!r})"
    assert "best promoted change so far (mean d, bpb)" in text, f"the charts did not render {where}"
    section = text[text.index("Best so far"):text.index("The mean paired difference (candidate")]
    values = re.findall(r"[−-]?\d+\.\d{6}", section)  # the value axes' ticks (the run and compute axes have fewer digits)
    assert values and set(values) == {"−0.050000"}, f"best so far moved off smear's promotion: {values} {where}"


def test_experiment_page_compares_both_arms_in_chromium(chromium, dashboard, tmp_path):
    from tests.test_dashboard import SMEAR
    screenshot = tmp_path / "experiment.png"
    wanted = ["Compared with the baseline", "candidate val_bpb", "baseline steps", "-0.0500", "Thin lines: each seed"]
    text = page_text(chromium, dashboard + f"experiment?id={SMEAR}", wanted, tmp_path, screenshot,
                     show="Compared with the baseline")
    where = f"(screenshot: {screenshot}; page text: {text[:1500]!r})"
    assert all(w in text for w in wanted), f"the paired comparison not rendered within {RENDER_S} s {where}"
    assert "Traceback" not in text and "Cannot read" not in text, where


def test_search_page_shows_running_jobs_and_refreshes_on_its_own_in_chromium(chromium, dashboard, tmp_path):
    from tests.test_dashboard import add_running_job
    db = f"sqlite:///{tmp_path / 'seeded.db'}"
    browser = DevTools(chromium, tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:  # the page is open first; the job starts afterwards: no reload, the running-jobs view finds it itself
        target = browser.send("Target.createTarget", {"url": dashboard + "search?search=cpu-search"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

        def text() -> str:
            result = browser.send("Runtime.evaluate", {"expression": "document.body ? document.body.textContent : ''",
                                                       "returnByValue": True}, session)
            return result["result"].get("value") or ""

        deadline = time.monotonic() + RENDER_S
        while "Promotion decisions" not in text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Running now" not in text()
        add_running_job(db)
        while not ("Running now (1)" in (now := text()) and "2.4133" in now) and time.monotonic() < deadline:
            time.sleep(0.5)  # the section refreshes itself within LIVE_REFRESH_S; its grid's cells fill in after
        shown = text()
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
        (tmp_path / "running.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    assert "Running now (1)" in shown and "2.4133" in shown and "1712" in shown.replace(",", ""), shown[shown.find("device-hours"):][:1500]


def test_search_page_draws_optunas_plots_in_chromium(chromium, dashboard, tmp_path):
    from tests.test_dashboard import add_optuna_study
    add_optuna_study(f"sqlite:///{tmp_path / 'seeded.db'}")
    screenshot = tmp_path / "optuna.png"
    wanted = ["Optuna's view of the study", "Hyperparameter Importances", "Parallel Coordinate Plot", "Slice Plot",
              "matrix_lr", "n_kv_head"]
    text = page_text(chromium, dashboard + "search?search=cpu-search", wanted, tmp_path, screenshot,
                     show="Optuna's view of the study")
    where = f"(screenshot: {screenshot}; page text: {text[-1500:]!r})"
    assert all(w in text for w in wanted), f"Optuna's plots not rendered within {RENDER_S} s {where}"


def test_notes_typed_in_chromium_are_saved_and_shown_again(chromium, dashboard, tmp_path):
    from leaderboard import Store
    from tests.test_dashboard import SMEAR
    db = f"sqlite:///{tmp_path / 'seeded.db'}"
    browser = DevTools(chromium, tmp_path / "chromium-profile", tmp_path / "chromium.log")

    def evaluate(session: str, expression: str):
        try:
            reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        except RuntimeError as error:
            # Page.reload answers before the navigation commits: an evaluation that lands in between is refused
            # ("Inspected target navigated or closed"). The page is not there yet; asking again is the answer.
            if "navigated or closed" in str(error) or "Cannot find context" in str(error):
                return None
            raise
        return reply["result"].get("value")

    def wait_for(session: str, expression: str) -> bool:
        deadline = time.monotonic() + RENDER_S
        while time.monotonic() < deadline:
            if evaluate(session, expression):
                return True
            time.sleep(0.5)
        return False

    notes_box = "document.querySelector('textarea[aria-label=\"Notes\"]')"
    try:
        target = browser.send("Target.createTarget", {"url": dashboard + f"experiment?id={SMEAR}"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        assert wait_for(session, f"!!{notes_box}"), "no Notes box on the Experiment page"
        evaluate(session, f"{notes_box}.focus()")
        browser.send("Input.insertText", {"text": "typed in a browser: keep it"}, session)
        evaluate(session, "[...document.querySelectorAll('button')].find(b => b.textContent.includes('Save notes')).click()")
        deadline = time.monotonic() + RENDER_S
        while Store(db).experiment(SMEAR)["notes"] is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert Store(db).experiment(SMEAR)["notes"] == "typed in a browser: keep it"
        # A fresh visit shows what was saved.
        browser.send("Page.reload", {}, session)
        assert wait_for(session, f"{notes_box} && {notes_box}.value === 'typed in a browser: keep it'"), \
            evaluate(session, f"{notes_box} && {notes_box}.value")
    finally:
        browser.close()


def test_search_page_shows_the_hypothesis_ledger_and_the_insights_in_chromium(chromium, dashboard, tmp_path):
    from tests.test_dashboard import SMEAR, SMEAR_RULE, add_ledger
    ids = add_ledger(f"sqlite:///{tmp_path / 'seeded.db'}")
    screenshot = tmp_path / "ledger.png"
    wanted = ["Hypothesis ledger", "1 supported, 1 refuted, 1 failed, 0 inconclusive, 1 pending", SMEAR_RULE,
              "Insight 2", f"cites #{ids[SMEAR]} smear (supported) · by agent", "Save insight", "Retire insight",
              "Retired and superseded insights (1)"]
    text = page_text(chromium, dashboard + "search?search=cpu-search", wanted, tmp_path, screenshot,
                     show="Hypothesis ledger")
    where = f"(screenshot: {screenshot}; page text: {text[-1500:]!r})"
    assert all(w in text for w in wanted), f"the ledger and insights not rendered within {RENDER_S} s {where}"
    assert "Traceback" not in text and "Cannot read" not in text, where
