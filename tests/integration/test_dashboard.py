"""The dashboard (GET / on the control port) in a real browser: Debian's chromium, headless,
driven by selenium through chromedriver. The page loads with no console error, shows the two
clients and their mappings, its traffic graph moves while a transfer runs, its kick button
kicks (the client links again), its cut button cuts a live connection, and with a
control_token it asks for the token first. A
screenshot is saved (tmp_path, and $WMPROXY_ARTIFACTS when set)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

from conftest import Pair, TcpServer, free_port, recv_all
from test_center import http_mapping, tcp_mapping


def wait_until(what, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = what()
            if got:
                return got
        except Exception:  # (the page still building itself)
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {timeout}s: {what}")
        time.sleep(0.2)


def cells(driver, table: str) -> list[str]:
    """The texts of ``table``'s cells, read in one script: the page rebuilds its tables every
    2 s, so elements found one by one may be gone (stale) before their text is read."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), td => td.textContent)", f"#{table} td")


def row_text(driver, table: str, text: str) -> str:
    """The text of the first row of ``table`` that contains ``text`` ('' if none), its cells
    joined by spaces (read in one script, as :func:`cells`)."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), "
        "tr => Array.from(tr.children, c => c.textContent).join(' '))", f"#{table} tr")
    return next((row for row in rows if text in row), "")


def click_in_row(driver, table: str, text: str) -> bool:
    """Click the button of the first row of ``table`` that contains ``text``. The page rebuilds
    its tables every 2 s: a row found just before a refresh is stale (then wait_until tries again)."""
    from selenium.webdriver.common.by import By

    row = next(tr for tr in driver.find_elements(By.CSS_SELECTOR, f"#{table} tr") if text in tr.text)
    row.find_element(By.TAG_NAME, "button").click()
    return True


def save(driver, tmp_path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    artifacts = os.environ.get("WMPROXY_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        shutil.copy(tmp_path / name, os.path.join(artifacts, name))


def test_the_dashboard_shows_clients_mappings_traffic_and_kicks(tmp_path, certs, origin, browser):
    from selenium.webdriver.common.by import By

    blob = os.urandom(8 << 20)
    source = TcpServer(lambda conn: conn.sendall(blob))
    cport, web, remote = free_port(), free_port(), free_port()
    pair = Pair(tmp_path, certs, start_client=False, server_top=f'control = "127.0.0.1:{cport}"',
                server_extra=f'map_http_bind = "127.0.0.1:{web}"\n')
    try:
        one = pair.start_client('client_id = "one"\n' + tcp_mapping("blob", source.port, remote) +
                                http_mapping("site", origin.port, "a.test"), proxy=free_port())
        two = pair.start_client('client_id = "two"\n' + http_mapping("other", origin.port, "b.test"),
                                proxy=free_port())
        one.wait_log("is up", timeout=15)
        two.wait_log("is up", timeout=15)
        browser.get(f"http://127.0.0.1:{cport}/")
        wait_until(lambda: {"alice#one", "alice#two"} <= set(cells(browser, "clients")))
        wait_until(lambda: {"blob", "site", "other"} <= set(cells(browser, "mappings")))
        assert f"127.0.0.1:{remote}" in cells(browser, "mappings") and "Host a.test" in cells(browser, "mappings")
        label = lambda: browser.find_element(By.ID, "bytes-chart-label").text  # noqa: E731
        before = wait_until(label)

        stop = threading.Event()

        def transfer() -> None:  # the tcp mapping's 8 MiB again and again, and requests through the http one
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", remote), timeout=30) as s:
                    recv_all(s)
                with socket.create_connection(("127.0.0.1", web), timeout=10) as s:
                    s.sendall(b"GET /whoami HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    recv_all(s)
                time.sleep(0.01)
        mover = threading.Thread(target=transfer, daemon=True)
        mover.start()
        try:
            wait_until(lambda: "MiB/s" in label() and label() != before, timeout=20)  # the graph moved
            wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#requests-chart polyline"))  # requests/s too
        finally:
            stop.set()
            mover.join(30)
        save(browser, tmp_path, "dashboard.png")
        wait_until(lambda: click_in_row(browser, "clients", "alice#two"))
        browser.switch_to.alert.accept()  # "Kick alice#two? It may link again."
        pair.server.wait_log("center: client alice#two (127.0.0.1:", timeout=10)
        two.wait_log("is up (attempt 2)", timeout=20)
        wait_until(lambda: "kick alice#two:" in browser.find_element(By.ID, "message").text)
        # a live connection, listed with its request, and cut from the page
        held = socket.create_connection(("127.0.0.1", web), timeout=10)
        held.sendall(b"GET /whoami HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert held.recv(4096).endswith(b"origin-A")
        peer = "127.0.0.1:%d" % held.getsockname()[1]
        text = wait_until(lambda: row_text(browser, "connections", peer))
        assert "GET a.test/whoami" in text and f"map-http 127.0.0.1:{web}" in text, text
        wait_until(lambda: click_in_row(browser, "connections", peer))
        browser.switch_to.alert.accept()  # "Cut 127.0.0.1:N -> GET a.test/whoami?"
        assert held.recv(4096) == b""  # (cut)
        held.close()
        wait_until(lambda: f"cut {peer}:" in browser.find_element(By.ID, "message").text)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        pair.stop()
        source.close()


def test_with_a_token_the_page_asks_for_it_first(tmp_path, start_proxy, browser):
    from selenium.webdriver.common.by import By

    cport = free_port()
    start_proxy(config=f'control = "127.0.0.1:{cport}"\ncontrol_token = "t0ken-of-the-test"\n'
                       f'[proxy]\nbind = "127.0.0.1:{{port}}"\n')
    browser.get(f"http://127.0.0.1:{cport}/")
    wait_until(lambda: browser.find_element(By.ID, "login").is_displayed())
    assert not browser.find_element(By.ID, "main").is_displayed()
    browser.find_element(By.ID, "token").send_keys("t0ken-of-the-test")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_until(lambda: "proxy" in cells(browser, "listeners"))
    assert browser.execute_script("return sessionStorage.getItem('wmproxy-token')") == "t0ken-of-the-test"
    assert browser.execute_script("return localStorage.length") == 0  # (the tab's session only)
    save(browser, tmp_path, "dashboard-token.png")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not errors, errors
