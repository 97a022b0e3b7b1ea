"""Steps the browser tests share."""

from __future__ import annotations

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
