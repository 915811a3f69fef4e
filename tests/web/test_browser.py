"""The dashboard in a real browser (Debian's Chromium driven by Playwright).

Screenshots of every step land in test-artifacts/dashboard/ (see browser.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from peer.coordinator import events as ev
from peer.files.thumbnails import LastRenderedStore, make_thumbnail
from peer.coordinator import status_machine
from peer.localfarm import LocalFarm

from peer.cli import prepare_job
from peer.scenes import make_scene
from tests.scenes import requires_blender, requires_ffmpeg

from .browser import CHROMIUM, LAUNCH_ARGS, artifacts_dir, png, requires_browser
from .conftest import FARM, OTHER_FARM, DashboardFarm, call, dashboard_app, echo_job, new_coordinator, serve

pytestmark = requires_browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class PageWatch:
    """Uncaught script errors of a page: any of them fails the test."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def check(self) -> None:
        assert self.errors == [], self.errors


async def new_page(browser: Any, viewport: dict[str, int] = DESKTOP) -> tuple[Any, Any, PageWatch]:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(20_000)
    return context, page, PageWatch(page)


async def shot(page: Any, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def job_row(page: Any, job_id: str) -> Any:
    return page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')


# --- a real farm, a real job ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@requires_blender
@requires_ffmpeg
async def test_a_real_farm_live(browser: Any, tmp_path: Path) -> None:
    """Three peer processes; the browser watches a follower. A job appears and progresses live, a task's
    log shows and follows, cancel works, and the view recovers when the coordinator is killed."""
    from playwright.async_api import expect

    farm = LocalFarm(tmp_path / "farm")
    try:
        await asyncio.to_thread(farm.start, 2)
        await asyncio.to_thread(farm.wait_for_workers, 2)
        viewer = farm.peers[1]  # worker-1: not the coordinator, so every read is forwarded
        context, page, watch = await new_page(browser)
        await page.goto(viewer.url + "/")
        await expect(page.locator("#live")).to_have_text("Live")
        await expect(page.locator("#coordinator-name")).to_have_text("coordinator")
        await expect(page.locator("#peers-body tr")).to_have_count(3)
        await expect(page.locator("#workers-body tr")).to_have_count(2)
        await expect(page.locator("#jobs-empty")).to_be_visible()

        # A job submitted elsewhere appears without a reload, and its progress moves.
        client = farm.client
        job = await asyncio.to_thread(client.submit, {
            **echo_job(message="hello from the browser test", sleep_duration_seconds=1, sleep_repeats=4),
            "name": "live job",
        })
        row = job_row(page, job["id"])
        await expect(row).to_be_visible()
        await page.wait_for_function(
            """(id) => { const p = document.querySelector(`#jobs-body tr[data-job-id="${id}"] progress`);
                         return p && p.value > 0 && p.value < p.max; }""", arg=job["id"])
        await expect(row.locator(".badge")).to_have_text("active")
        await shot(page, "01-job-running")
        await expect(row.locator(".badge")).to_have_text("completed", timeout=60_000)
        await expect(row.locator("progress")).to_have_attribute("value", "5")

        # Its tasks, with workers, and the echo task's log.
        await row.locator("a.row-link").click()
        await expect(page.locator("#job-title")).to_have_text("live job")
        await expect(page.locator("#tasks-body tr")).to_have_count(5)
        await expect(page.locator("#tasks-body tr").first.locator("td").nth(2)).to_have_text(re.compile("worker-"))
        await page.locator("#tasks-body a.row-link", has_text="echo").click()
        await expect(page.locator("#log")).to_contain_text('echo: "hello from the browser test"')
        await expect(page.locator("#log-full")).to_be_visible()
        await expect(page.locator("#job-image")).to_be_hidden()  # an echo job renders no image: no empty box
        await shot(page, "02-job-completed-with-log")

        # A real render: the worker's thumbnail of its last frame shows on the job's page.
        scene = await asyncio.to_thread(make_scene, tmp_path / "shot" / "browser.blend", frames=(1, 2),
                                        resolution=(48, 32))
        render = await asyncio.to_thread(
            prepare_job, client, "simple-blender-render", sets=[f"render_output_root={tmp_path / 'renders'}"],
            blend=str(scene), name="render job", verbose=False)
        render = await asyncio.to_thread(client.submit, render)
        await page.goto(f"{viewer.url}/#/job/{render['id']}")
        await expect(page.locator("#job-title")).to_have_text("render job")
        await expect(page.locator("#job-facts .badge")).to_have_text("completed", timeout=60_000)
        await expect(page.locator("#job-image")).to_be_visible(timeout=30_000)
        await page.wait_for_function("() => document.querySelector('#job-image-img').naturalWidth > 0")
        await shot(page, "02b-last-rendered-image")

        # A long job: follow a running task's log, then cancel the job from the page.
        long_job = await asyncio.to_thread(client.submit, {
            **echo_job(message="long", sleep_duration_seconds=60, sleep_repeats=2), "name": "long job"})
        long_row = job_row(page, long_job["id"])
        await expect(long_row.locator(".badge")).to_have_text("active", timeout=30_000)
        await long_row.locator("a.row-link").click()
        await expect(page.locator("#job-title")).to_have_text("long job")
        running = page.locator("#tasks-body tr", has=page.locator('.badge[data-status="active"]')).first
        await expect(running).to_be_visible(timeout=30_000)
        await running.locator("a.row-link").click()
        log = page.locator("#log")
        await expect(log).to_contain_text("task assigned to worker")
        await expect(log).not_to_contain_text("canceled")
        await shot(page, "03-running-task-log")

        await page.locator('#job-actions button[data-action="cancel"]').click()
        dialog = page.locator("#confirm")
        await expect(dialog).to_be_visible()
        await expect(page.locator("#confirm-title")).to_contain_text("long job")
        await shot(page, "04-cancel-confirmation")
        await page.locator("#confirm-ok").click()
        await expect(long_row.locator(".badge")).to_have_text("canceled")
        await expect(page.locator("#job-facts .badge")).to_have_text("canceled")
        await expect(log).to_contain_text("active -> canceled")  # the open log followed by itself
        await expect(page.locator('#job-actions button[data-action="requeue"]')).to_be_visible()
        await shot(page, "05-job-canceled")
        assert (await asyncio.to_thread(client.job, long_job["id"]))["status"] == "canceled"

        # The coordinator dies; the farm elects another, and the view follows without a reload.
        coordinator = farm.peers[0]
        os.killpg(coordinator.process.pid, signal.SIGKILL)
        await asyncio.to_thread(coordinator.process.wait, 10)
        await expect(page.locator("#coordinator-name")).to_have_text(re.compile(r"^worker-[12]$"), timeout=30_000)
        await expect(page.locator("#peers-body tr", has_text="gone for")).to_have_count(1, timeout=30_000)
        await expect(job_row(page, job["id"]).locator(".badge")).to_have_text("completed")
        await expect(page.locator("#banner")).to_be_hidden(timeout=30_000)
        await expect(page.locator("#live")).to_have_text("Live")
        # The workers sign on at the new coordinator, and the page shows them back at work.
        await expect(page.locator('#workers-body .badge[data-status="awake"]')).to_have_count(2, timeout=30_000)
        await shot(page, "06-after-coordinator-change")
        watch.check()
        await context.close()
    finally:
        await asyncio.to_thread(farm.stop)


# --- sections fed by optional endpoints ---------------------------------------------------------------


async def save_last_rendered(coordinator: Any, job_id: str, where: Path) -> None:
    """A real thumbnail where workers' thumbnails land on the coordinator (peer/files/thumbnails.py)."""
    frame = where / f"{job_id}.png"
    frame.write_bytes(png(64, 48))
    LastRenderedStore(coordinator.logs.root).save(job_id, await make_thumbnail(frame))


@requires_ffmpeg
async def test_images_blocklist_and_worker_sleep(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    coordinator = await new_coordinator(tmp_path / "data")
    served = await serve(dashboard_app(coordinator, remote=False))
    farm = DashboardFarm(coordinator, served, served, tmp_path / "data")
    try:
        farm.start_worker("render-1")
        async with aiohttp.ClientSession() as session:
            _, job = await call(session, "POST", served.url + "/api/v3/jobs", {**echo_job(), "name": "frames"})
        at = status_machine.now()
        await coordinator._write(lambda tx: tx.emit(
            ev.WorkerBlocklisted(job_id=job["id"], worker_id="id-render-1", task_type="misc", at=at)))
        await save_last_rendered(coordinator, job["id"], tmp_path)

        context, page, watch = await new_page(browser)
        await page.goto(f"{served.url}/#/job/{job['id']}")
        await expect(page.locator("#job-title")).to_have_text("frames")
        image = page.locator("#job-image-img")
        await expect(page.locator("#job-image")).to_be_visible()
        await page.wait_for_function("() => document.querySelector('#job-image-img').naturalWidth > 0")
        await expect(image).to_have_attribute("alt", "Last rendered frame of frames")
        await page.wait_for_function("() => [...document.querySelectorAll('#jobs-body img.thumb')]"
                                     ".some((img) => img.complete && img.naturalWidth > 0)")
        await expect(page.locator("#farm-image")).to_be_visible()

        await expect(page.locator("#blocklist")).to_be_visible()
        await expect(page.locator("#blocklist-items li")).to_have_text(re.compile("render-1 .*misc"))
        worker_row = page.locator('#workers-body tr[data-worker-id="id-render-1"]')
        await expect(worker_row.locator(".badge")).to_have_text("awake")
        await shot(page, "07-optional-sections")

        await page.locator("#blocklist-clear").click()
        await expect(page.locator("#confirm-title")).to_contain_text("Clear the blocklist")
        await page.locator("#confirm-ok").click()
        await expect(page.locator("#blocklist-empty")).to_be_visible()
        async with aiohttp.ClientSession() as session:
            assert await call(session, "GET", f"{served.url}/api/v3/jobs/{job['id']}/blocklist") == (200, [])

        await worker_row.locator('button[data-action="sleep"]').click()
        await expect(page.locator(".toast", has_text="render-1 is going to sleep")).to_be_visible()
        await expect(worker_row.locator(".badge")).to_have_text("asleep")
        await expect(worker_row.locator('button[data-action="wake"]')).to_be_visible()
        await shot(page, "08-worker-asleep")
        await worker_row.locator('button[data-action="wake"]').click()
        await expect(worker_row.locator(".badge")).to_have_text("awake")
        watch.check()
        await context.close()
    finally:
        for task in farm.workers:
            task.cancel()
        await asyncio.gather(*farm.workers, return_exceptions=True)
        await coordinator.begin_shutdown()
        await served.runner.cleanup()
        await coordinator.stop()


async def test_the_page_reconnects_when_its_peer_comes_back(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    coordinator = await new_coordinator(tmp_path / "data")
    served = await serve(dashboard_app(coordinator, remote=False))
    port = served.runner.addresses[0][1]
    context, page, watch = await new_page(browser)
    try:
        await page.goto(served.url + "/")
        await expect(page.locator("#live")).to_have_text("Live")
        await served.runner.cleanup()  # the peer's HTTP server goes away (a restart, say)
        await expect(page.locator("#live")).to_have_text(re.compile(r"Live updates lost; retrying in \d+ s"))
        job = await coordinator.submit_job({**echo_job(), "name": "submitted while away", "initial_status": "paused"})
        assert job is not None
        runner = web.AppRunner(dashboard_app(coordinator, remote=False), access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
        served.runner = runner
        # Back without a reload: live again, and what happened meanwhile is shown.
        await expect(page.locator("#live")).to_have_text("Live", timeout=30_000)
        await expect(job_row(page, job["id"])).to_be_visible()
        watch.check()
    finally:
        await context.close()
        await coordinator.begin_shutdown()
        await served.runner.cleanup()
        await coordinator.stop()


# --- access from another computer ---------------------------------------------------------------


async def test_a_browser_on_another_computer_logs_in_with_the_join_code(
        browser: Any, dashboard_farm: DashboardFarm) -> None:
    from playwright.async_api import expect

    async with aiohttp.ClientSession() as session:
        _, job = await call(session, "POST", dashboard_farm.local.url + "/api/v3/jobs",
                            {**echo_job(), "name": "seen remotely", "initial_status": "paused"})
    url = dashboard_farm.remote.url
    context, page, watch = await new_page(browser)
    response = await page.goto(url + "/")
    assert response.status == 401
    await expect(page.locator("h1")).to_have_text("Flamenco Peer dashboard")
    await expect(page.locator("body")).to_contain_text("flamenco-peer farm join-code")
    await expect(page.locator("#login-message")).to_be_hidden()
    api = await page.evaluate("async () => { const r = await fetch('/api/v3/jobs'); return [r.status, await r.json()]; }")
    assert api[0] == 401 and "carries no farm signature" in api[1]["message"]
    await shot(page, "08-login-page")

    await page.locator("#code").fill(OTHER_FARM.join_code())
    await page.locator("#login-form button").click()
    await expect(page.locator("#login-message")).to_contain_text("belongs to another farm")
    await shot(page, "09-login-wrong-code")

    await page.locator("#code").fill(FARM.join_code())
    await page.locator("#login-form button").click()
    await expect(page.locator("#live")).to_have_text("Live")
    await expect(job_row(page, job["id"])).to_be_visible()
    await expect(page.locator("#where")).to_contain_text("studio")
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["flamenco_peer_session"]["httpOnly"] and cookies["flamenco_peer_session"]["sameSite"] == "Strict"

    # Acting works with the session: raise the priority from the page.
    await job_row(page, job["id"]).locator("a.row-link").click()
    await page.locator("#priority-input").fill("77")
    await page.locator("#priority-form button").click()
    await expect(job_row(page, job["id"]).locator("td").nth(4)).to_have_text("77")
    await shot(page, "10-logged-in")

    await page.locator("#logout button").click()
    await expect(page.locator("#login-form")).to_be_visible()
    watch.check()
    await context.close()


# --- layouts, keyboard, contrast ------------------------------------------------------------------------

CONTRAST = """
() => {
  const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                                 if (!c.startsWith('rgba(0, 0, 0, 0)') && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; };
  const out = [];
  for (const el of document.querySelectorAll('h1, h2, th, td, .badge, button, a, p, dt, dd, pre')) {
    if (!el.offsetParent || !el.textContent.trim()) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(rgb(background(el)));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    out.push([el.tagName + (el.className ? '.' + el.className : ''), el.textContent.trim().slice(0, 30), Math.round(ratio * 100) / 100]);
  }
  return out;
}
"""


async def test_desktop_and_phone_layouts_keyboard_and_contrast(browser: Any, dashboard_farm: DashboardFarm) -> None:
    from playwright.async_api import expect

    async with aiohttp.ClientSession() as session:
        jobs = []
        for name in ("first job", "second job"):
            _, job = await call(session, "POST", dashboard_farm.local.url + "/api/v3/jobs",
                                {**echo_job(), "name": name, "initial_status": "paused"})
            jobs.append(job)
    dashboard_farm.start_worker("render-1")

    layouts = [(label, viewport, scheme) for scheme in ("light", "dark")
               for label, viewport in (("desktop", DESKTOP), ("phone", PHONE))]
    for label, viewport, scheme in layouts:
        context = await browser.new_context(viewport=viewport, color_scheme=scheme)
        page = await context.new_page()
        page.set_default_timeout(20_000)
        watch = PageWatch(page)
        await page.goto(dashboard_farm.local.url + "/")
        await expect(page.locator("#live")).to_have_text("Live")
        await expect(page.locator("#jobs-body tr")).to_have_count(2)
        await expect(page.locator("#workers-body tr")).to_have_count(1)
        # Nothing wider than the screen: the page never scrolls sideways.
        overflow = await page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{label}: the page is {overflow}px wider than the {viewport['width']}px viewport"
        if label == "desktop":  # jobs and the farm side by side
            jobs_box = await page.locator("#jobs").bounding_box()
            farm_box = await page.locator("#farm").bounding_box()
            assert farm_box["x"] > jobs_box["x"] + jobs_box["width"] - 1
        else:  # one column, and a section menu
            await expect(page.locator("nav.sections")).to_be_visible()
            jobs_box = await page.locator("#jobs").bounding_box()
            assert jobs_box["width"] <= viewport["width"]

        # Keyboard only: tab to the first job, open it, move down, open a task, cancel the dialog with Escape.
        await page.keyboard.press("Tab")
        await expect(page.locator("a.skip")).to_be_focused()
        await page.keyboard.press("Enter")
        for _ in range(40):
            await page.keyboard.press("Tab")
            if await page.evaluate("() => document.activeElement.classList.contains('row-link')"):
                break
        newest = page.locator("#jobs-body a.row-link").first
        await expect(newest).to_be_focused()
        await page.keyboard.press("ArrowDown")
        await expect(page.locator("#jobs-body a.row-link").nth(1)).to_be_focused()
        await page.keyboard.press("ArrowUp")
        await page.keyboard.press("Enter")
        await expect(page.locator("#job-title")).to_have_text("second job")
        await page.locator('#job-actions button[data-action="cancel"]').focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#confirm")).to_be_visible()
        await expect(page.locator("#confirm-cancel")).to_be_focused()  # the safe choice is the default
        await page.keyboard.press("Escape")
        await expect(page.locator("#confirm")).to_be_hidden()
        await expect(page.locator("#job-facts .badge")).to_have_text("paused")  # nothing was canceled
        if label == "phone":  # the section menu scrolls; it does not close what is open
            await page.locator('nav.sections a[href="#workers"]').click()
            await expect(page.locator("#workers")).to_be_in_viewport()
            await expect(page.locator("#job")).to_be_visible()

        ratios = await page.evaluate(CONTRAST)
        assert ratios, "no text measured"
        low = [r for r in ratios if r[2] < 4.5]
        assert low == [], f"{label}/{scheme}: text below 4.5:1 contrast: {low}"
        await shot(page, f"11-{label}-{scheme}")
        watch.check()
        await context.close()
