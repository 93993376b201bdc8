"""The history page in a real browser: a hub sampling its metrics every second, a spoke
doing some work, and the page's SVG charts of it (1 h, 24 h, 7 d), with the values under the
pointer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.cluster import Spoke, wait_until
from tests.web.conftest import Cluster, goto, screenshot, sign_in
from tests.ws_helpers import ThreadedLLM


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, sandbox_image: str,
            web_llm: ThreadedLLM) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("web-history"), web_llm)
    c.hub.extra = ["--history-interval", "1s"]
    c.start()
    yield c
    c.stop()


def _series(cluster: Cluster) -> dict[str, list[list[float]]]:
    return dict(cluster.hub.client().request("GET", "/api/history?range=1h")["series"])


def test_history_charts(page: Any, cluster: Cluster, home_spoke: Spoke, sandbox_image: str) -> None:
    hub = cluster.hub
    client = hub.client()
    box = client.request("POST", "/api/boxes", {"spoke": home_spoke.name, "image": sandbox_image})
    for _ in range(3):
        list(client.exec_stream(box["id"], ["true"]))
    # Two buckets of the 1-hour range (12 s each) make a line; the create's latency is in the
    # first sample after it (the buckets alone may already be there when the hub has been up
    # a while, before the sampler's next tick has seen the create).
    wait_until(lambda: len(_series(cluster).get("spokes.connected", [])) >= 2, timeout=60,
               what="two history buckets")
    wait_until(lambda: "latency.p95.box.create" in _series(cluster), timeout=30,
               what="the box.create latency in a sample")
    names = sorted(_series(cluster))
    assert "latency.p95.box.create" in names and "latency.p50.box.create" in names, names

    sign_in(page, hub, "admin", cluster.password, "/history")
    spokes = page.locator("figure[data-chart='spokes']")
    expect(spokes.locator("figcaption")).to_have_text("Spokes by state")
    expect(spokes.locator(".legend")).to_contain_text("connected (now 1)")
    connected = spokes.locator("path.line[data-series='spokes.connected']")
    assert "L" in (connected.get_attribute("d") or "")
    assert spokes.locator("text.tick").count() >= 5  # value ticks and time ticks
    latency = page.locator("figure[data-chart='latency.box.create']")
    expect(latency.locator("figcaption")).to_have_text("Latency of box.create")
    expect(latency.locator(".legend")).to_contain_text("p50")
    expect(latency.locator(".legend")).to_contain_text("ms")
    for family in ("workstreams", "queue", "boxes", "tokens"):
        expect(page.locator(f"figure[data-chart='{family}']")).to_have_count(1)

    # Hovering reads the values at that time.
    box_rect = spokes.locator("rect.hit").bounding_box()
    assert box_rect is not None
    page.mouse.move(box_rect["x"] + box_rect["width"] - 2, box_rect["y"] + 10)
    # (the newest bucket's average: the spoke may have joined within it)
    expect(spokes.locator(".readout")).to_have_text(re.compile(r"\d.* — connected: (1|0\.\d+), left: 0, lost: 0"))
    expect(spokes.locator("line.guide")).to_have_attribute("visibility", "visible")
    page.mouse.move(0, 0)
    screenshot(page, "history.png", full_page=True)

    # Other ranges: one click, the URL says which (a reload keeps it).
    page.click("#ranges button[data-range='24h']")
    page.wait_for_url("**/history?range=24h")
    expect(page.locator("#span")).to_contain_text("one point per 288 s")
    page.click("#ranges button[data-range='7d']")
    expect(page.locator("#span")).to_contain_text("one point per 2016 s")
    goto(page, page.url, reload=True)
    expect(page.locator("#ranges button.on")).to_have_text("7 days")
    expect(page.locator("figure[data-chart='spokes']")).to_have_count(1)
