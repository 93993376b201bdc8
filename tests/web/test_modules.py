"""The pages' own small modules, run in the browser as the pages load them: the Markdown
renderer (safe by construction: it builds nodes, never parses HTML), the chart module and
the history page's grouping of series. The static files are public, so a plain hub serves
them; no sign-in needed (and, last, what the sign-in page says when it is rate limited)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.cluster import Hub
from tests.web.conftest import goto
from tests.web_client import admin_password

RENDER = """async (text) => {
    const {renderMarkdown} = await import('/static/js/markdown.js');
    const div = document.createElement('div');
    div.append(renderMarkdown(text));
    document.body.append(div);
    return div.innerHTML;
}"""


@pytest.fixture(scope="module")
def static_hub(tmp_path_factory: pytest.TempPathFactory, sandbox_image: str) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("static"))
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def static_page(browser: Any, static_hub: Hub) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    goto(page, static_hub.url + "/signin")
    yield page
    context.close()


@pytest.mark.parametrize("text, html", [
    ("plain *em* **strong** `code` ~~gone~~", "<p>plain <em>em</em> <strong>strong</strong> <code>code</code> <del>gone</del></p>"),
    ("# Title\n\npara one\nline two", "<h1>Title</h1><p>para one<br>line two</p>"),
    ("- a\n- b\n  - nested\n- c", "<ul><li>a</li><li>b<ul><li>nested</li></ul></li><li>c</li></ul>"),
    ("1. one\n2. two", "<ol><li>one</li><li>two</li></ol>"),
    ("```python\nx = '<b>'\n```", '<pre><code class="language-python">x = \'&lt;b&gt;\'</code></pre>'),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
    ("> quoted **bit**", "<blockquote><p>quoted <strong>bit</strong></p></blockquote>"),
    ("| a | b |\n|---|--:|\n| 1 | 2 |", '<table class="md-table"><thead><tr><th>a</th><th class="align-right">b</th></tr></thead>'
                                        '<tbody><tr><td>1</td><td class="align-right">2</td></tr></tbody></table>'),
    ("a\n\n---\n\nb", "<p>a</p><hr><p>b</p>"),
    (r"not \*em\*", "<p>not *em*</p>"),
    ("snake_case_name stays", "<p>snake_case_name stays</p>"),
])
def test_markdown_renders(static_page: Any, text: str, html: str) -> None:
    assert static_page.evaluate(RENDER, text) == html


@pytest.mark.parametrize("text, html", [
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
    ("[x](javascript:alert(1))", "<p>x (javascript:alert(1))</p>"),
    ("[x](data:text/html,hi)", "<p>x (data:text/html,hi)</p>"),
    ("![pic](https://evil.example/t.png)", "<p>[image: pic]</p>"),
    ("[ok](https://example.com/a?b=1)", '<p><a href="https://example.com/a?b=1" rel="noopener noreferrer nofollow" target="_blank">ok</a></p>'),
    ("see https://example.com/x.", '<p>see <a href="https://example.com/x" rel="noopener noreferrer nofollow" target="_blank">https://example.com/x</a>.</p>'),
    ('**<a href="javascript:1">b</a>**', '<p><strong>&lt;a href="javascript:1"&gt;b&lt;/a&gt;</strong></p>'),
])
def test_markdown_never_makes_html_from_text(static_page: Any, text: str, html: str) -> None:
    assert static_page.evaluate(RENDER, text) == html
    assert static_page.evaluate("typeof window.alert") == "function"


def test_chart_draws_lines_axes_and_a_readout(static_page: Any) -> None:
    result = static_page.evaluate("""async () => {
        const {lineChart, niceTicks} = await import('/static/js/chart.js');
        const fig = document.createElement('figure');
        document.body.append(fig);
        const t0 = 1700000000;
        const series = [{name: 'a', label: 'a', points: [[t0, 1], [t0 + 60, 4], [t0 + 120, null], [t0 + 180, 2]]},
                        {name: 'b', label: 'b', points: [[t0, 0], [t0 + 180, 3]]}];
        const svg = lineChart(fig, {title: 'T', series, from: t0, to: t0 + 180, unit: 'ms'});
        const box = svg.querySelector('.hit').getBoundingClientRect();
        svg.querySelector('.hit').dispatchEvent(new MouseEvent('mousemove', {clientX: box.right - 1, clientY: box.top + 5, bubbles: true}));
        return {
            paths: [...svg.querySelectorAll('path.line')].map(p => p.getAttribute('d')),
            ticks: [...svg.querySelectorAll('text.tick')].map(t => t.textContent).slice(0, 3),
            readout: fig.querySelector('.readout').textContent,
            legend: fig.querySelector('.legend').textContent,
            nice: [niceTicks(4), niceTicks(0.37), niceTicks(1234)],
        };
    }""")
    a, b = result["paths"]
    assert a.count("M") == 2 and a.count("L") == 1, "a gap (null) breaks the line"
    assert a.endswith("h0"), "a lone sample after a gap is a dot"
    assert b.count("M") == 1 and b.count("L") == 1
    assert result["ticks"] == ["0", "1", "2"]
    assert result["readout"].endswith("a: 2 ms, b: 3 ms")
    assert "a (now 2 ms)" in result["legend"] and "b (now 3 ms)" in result["legend"]
    assert result["nice"] == [[0, 1, 2, 3, 4], [0, 0.1, 0.2, 0.3, 0.4], [0, 500, 1000, 1500]]


def test_history_groups_series_into_charts(static_page: Any) -> None:
    charts = static_page.evaluate("""async () => {
        const {groupSeries} = await import('/static/js/series.js');
        return groupSeries({
            'latency.p95.box.exec': [[1, 0.5]], 'latency.p50.box.exec': [[1, 0.25]],
            'spokes.connected': [[1, 2]], 'spokes.lost': [[1, 0]], 'queue.depth': [[1, 3]],
            'tokens.input': [[1, 10]],
        }).map(c => [c.key, c.title, c.unit, c.series.map(s => [s.label, s.points[0][1]])]);
    }""")
    assert charts == [
        ["spokes", "Spokes by state", "", [["connected", 2], ["lost", 0]]],
        ["queue", "Queue depth", "", [["depth", 3]]],
        ["tokens", "Model tokens used", "", [["input", 10]]],
        ["latency.box.exec", "Latency of box.exec", "ms", [["p50", 250], ["p95", 500]]],
    ]


def test_sign_in_says_when_it_is_rate_limited(page: Any, static_hub: Hub) -> None:
    """Last in this module: it leaves this hub refusing sign-ins from here for minutes."""
    goto(page, static_hub.url + "/signin?next=/chat")
    message = page.locator("#signin-msg")
    for attempt in range(5):
        page.fill("input[name=user]", "admin")
        page.fill("input[name=password]", f"wrong-{attempt}")
        page.click("#signin button[type=submit]")
        expect(message).to_have_text("Wrong user name or password.")
        page.evaluate("document.querySelector('#signin-msg').hidden = true")
    page.fill("input[name=password]", admin_password(static_hub))
    page.click("#signin button[type=submit]")
    expect(message).to_have_text(re.compile(r"^Too many requests: too many sign-in attempts; try again in \d+ s$"))
    assert page.url.endswith("/signin?next=/chat")
