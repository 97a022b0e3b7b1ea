"""Credentials and CSRF/CSP in a real browser: tokens made and revoked on the Users page
(Dash callbacks carry the CSRF token), no Content-Security-Policy violation on the pages,
and the navbar's "Log out" ends the session, a copied cookie included."""

from __future__ import annotations

import pytest
import requests
from browser_helpers import log_in
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline'));
});
"""


def _violations(driver) -> list[str]:
    return driver.execute_script("return window.__cspViolations || null;")


def _api_status(portal, secret: str) -> int:
    return requests.get(portal.url + "/api/runs", timeout=30,
                        headers={"Authorization": f"Bearer {secret}"}).status_code


def test_tokens_on_the_users_page_and_log_out(live_portal, browser):
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP_VIOLATIONS})
    wait = WebDriverWait(browser, 30)
    log_in(browser, live_portal)
    for path, marker in (("/new", "new-submit"), ("/runs", "runs-page")):
        browser.get(live_portal.url + path)
        wait.until(EC.presence_of_element_located((By.ID, marker)))
        assert _violations(browser) == [], path

    browser.get(live_portal.url + "/admin/users")
    name = wait.until(EC.element_to_be_clickable((By.ID, "users-token-name")))
    name.send_keys("e2e-laptop")
    browser.find_element(By.ID, "users-token-create").click()
    secret = wait.until(EC.visibility_of_element_located((By.ID, "users-token-secret"))).text
    assert secret.startswith("la_") and _api_status(live_portal, secret) == 200
    wait.until(EC.text_to_be_present_in_element((By.ID, "users-tokens-grid"), "e2e-laptop"))

    Select(browser.find_element(By.ID, "users-token-revoke-choice")).select_by_visible_text(
        next(o.text for o in Select(browser.find_element(By.ID, "users-token-revoke-choice")).options
             if o.text.startswith("e2e-laptop")))
    browser.find_element(By.ID, "users-token-revoke").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "users-token-revoke-result"), "Revoked"))
    assert _api_status(live_portal, secret) == 401
    wait.until(EC.text_to_be_present_in_element((By.ID, "users-tokens-grid"), "revoked"))
    assert _violations(browser) == []

    copied = {c["name"]: c["value"] for c in browser.get_cookies()}
    assert requests.get(live_portal.url + "/api/runs", cookies=copied, timeout=30).status_code == 200
    browser.find_element(By.LINK_TEXT, "Log out").click()
    wait.until(EC.presence_of_element_located((By.ID, "login-submit")))
    assert requests.get(live_portal.url + "/api/runs", cookies=copied, timeout=30).status_code == 401
