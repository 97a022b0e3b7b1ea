"""Steps the browser tests share."""

from __future__ import annotations

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def log_in(driver, portal) -> None:
    """Log in through the login form as the portal's admin; returns once the home page is shown."""
    driver.get(portal.url + "/login")
    driver.find_element(By.ID, "username").send_keys(portal.username)
    driver.find_element(By.ID, "password").send_keys(portal.password)
    driver.find_element(By.ID, "login-submit").click()
    WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.ID, "home-page")))


def api_session(driver, portal) -> requests.Session:
    """A requests session carrying the browser's login cookies (the JSON API as that user).

    It sends ``X-Requested-With`` as the portal's own scripts would: a state-changing
    ``/api/`` request that a cookie authenticates needs that custom header (CSRF protection).
    """
    session = requests.Session()
    session.headers["X-Requested-With"] = "XMLHttpRequest"
    for cookie in driver.get_cookies():
        session.cookies.set(cookie["name"], cookie["value"])
    assert session.get(portal.url + "/api/runs", timeout=30).status_code == 200
    return session
