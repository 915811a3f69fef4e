"""Run on "another computer" (a network namespace) against a peer's dashboard; prints JSON results.

    python -m tests.web.remote_client URL JOIN_CODE WRONG_CODE JOB_ID [SCREENSHOT_DIR CHROMIUM]

With SCREENSHOT_DIR and CHROMIUM, a real Chromium (Playwright) also logs in through the page.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp


async def api_checks(url: str, code: str, wrong: str, job_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def record(name: str, session: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> None:
        async with session.request(method, url + path, allow_redirects=False, **kw) as resp:
            text = await resp.text()
            out[name] = {"status": resp.status, "text": text[:3000], "set_cookie": resp.headers.get("Set-Cookie", "")}

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await record("page", session, "GET", "/")
        await record("jobs", session, "GET", "/api/v3/jobs")
        await record("info", session, "GET", "/web/info")
        await record("events", session, "GET", "/peer/v1/events/stream")
        await record("priority", session, "POST", f"/api/v3/jobs/{job_id}/setpriority", json={"priority": 90},
                     headers={"Origin": url})
        await record("cancel", session, "POST", f"/api/v3/jobs/{job_id}/setstatus",
                     json={"status": "cancel-requested"}, headers={"Origin": url})
        await record("delete", session, "DELETE", f"/api/v3/jobs/{job_id}", headers={"Origin": url})
        await record("static", session, "GET", "/web/static/style.css")
        await record("wrong login", session, "POST", "/login", data={"code": wrong})
        await record("login", session, "POST", "/login", data={"code": code})
        await record("jobs after login", session, "GET", "/api/v3/jobs")
        await record("info after login", session, "GET", "/web/info")
        await record("priority after login", session, "POST", f"/api/v3/jobs/{job_id}/setpriority",
                     json={"priority": 90}, headers={"Origin": url})
        async with session.get(url + "/peer/v1/events/stream") as resp:
            first = b""
            async with asyncio.timeout(10):
                while b"event: hello" not in first:
                    first += await resp.content.readuntil(b"\n\n")
            out["events after login"] = {"status": resp.status, "text": first.decode()}
    return out


async def browser_checks(url: str, code: str, job_id: str, screenshots: str, chromium: str) -> dict[str, Any]:
    from playwright.async_api import async_playwright, expect

    out: dict[str, Any] = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True,
                                                   args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = await page.goto(url + "/")
            out["login page status"] = response.status
            out["login page text"] = await page.locator("body").inner_text()
            await page.screenshot(path=f"{screenshots}/12-remote-login-page.png", full_page=True)
            await page.locator("#code").fill(code)
            await page.locator("#login-form button").click()
            await expect(page.locator("#live")).to_have_text("Live")
            await expect(page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')).to_be_visible()
            out["where"] = await page.locator("#where").inner_text()
            await page.screenshot(path=f"{screenshots}/13-remote-dashboard.png", full_page=True)
            out["page errors"] = errors
        finally:
            await browser.close()
    return out


async def main() -> None:
    url, code, wrong, job_id = sys.argv[1:5]
    results = {"api": await api_checks(url, code, wrong, job_id)}
    if len(sys.argv) > 6:
        results["browser"] = await browser_checks(url, code, job_id, sys.argv[5], sys.argv[6])
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
