"""The dashboard in a real browser, against a real hub with real spokes and Docker: signing in
and out, a join token whose command really joins a spoke, spokes coming and going live (no
reload), revoking one, a box's command box, and what a viewer may see and do."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
from playwright.sync_api import expect

from client.http_client import ApiError, HubClient
from tests.cluster import wait_until
from tests.llm_server import Call, Say
from tests.web.conftest import SCREENSHOTS, Cluster, goto, screenshot, sign_in
from tests.web_client import Web

SPOKE_ROW = "#spokes tr[data-spoke='{}']"


def _mark_page(page: Any) -> None:
    """A marker that a reload or a navigation would lose."""
    page.evaluate("window.__sameDocument = true")


def _same_page(page: Any) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def _wait_state(page: Any, spoke: str, state: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f"{SPOKE_ROW.format(spoke)}[data-state='{state}']", timeout=timeout)


def test_sign_in_make_a_token_and_watch_its_spoke_join_and_leave(page: Any, cluster: Cluster) -> None:
    hub = cluster.hub
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    goto(page, hub.url + "/")
    page.wait_for_url("**/signin?next=%2F")
    page.fill("input[name=user]", "admin")
    page.fill("input[name=password]", "not the password")
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin-msg")).to_have_text("Wrong user name or password.")
    page.fill("input[name=password]", cluster.password)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#who:not(:empty)")
    assert page.url == hub.url + "/"
    assert page.locator("#who").inner_text() == "admin (admin)"

    # A join token from the form: the exact command, and the Copy button copies it.
    page.fill("#token-new input[name=name]", "laptop")
    page.select_option("#token-new select[name=ttl]", "1h")
    page.click("#token-new button[type=submit]")
    expect(page.locator("#join-cmd")).to_have_value(re.compile(r"^spoke join shj1\."))
    command = page.locator("#join-cmd").input_value()
    assert command.startswith("spoke join shj1."), command
    page.click("#join-copy")
    page.wait_for_selector("#join-copy:text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == command
    page.wait_for_selector("#tokens tr[data-state='valid'] >> text=laptop")

    # The spoke joins with that very token; the page shows it without a reload.
    _mark_page(page)
    laptop = cluster.new_spoke("laptop")
    laptop.join(command.split()[-1], wait=False)
    _wait_state(page, "laptop", "connected")
    row = page.locator(SPOKE_ROW.format("laptop"))
    assert "0/4 busy" in row.inner_text()
    page.wait_for_selector("#tokens tr[data-state='used'] >> text=laptop")
    page.wait_for_selector("#timeline li >> text=laptop")

    # A clean stop says goodbye: "left". A killed spoke says nothing: "lost".
    laptop.stop()
    _wait_state(page, "laptop", "left")
    assert _same_page(page)
    laptop.run(wait=False)
    _wait_state(page, "laptop", "connected")
    assert laptop.proc is not None
    laptop.proc.stop(signal.SIGKILL)
    _wait_state(page, "laptop", "lost")
    assert _same_page(page), "the page was reloaded"
    events = page.locator("#timeline").inner_text()
    assert "spoke.left" in events and "spoke.lost" in events, events


def test_without_the_event_stream_the_dashboard_polls(page: Any, cluster: Cluster) -> None:
    page.route("**/api/events/stream*", lambda route: route.abort())
    sign_in(page, cluster.hub, "admin", cluster.password)
    expect(page.locator("#live")).to_have_text("○ polling")
    _mark_page(page)
    late = cluster.new_spoke("late")
    late.join(wait=False)
    _wait_state(page, "late", "connected")
    expect(page.locator("#timeline li", has_text="spoke.connected").filter(has_text="late")).to_have_count(1)
    late.stop()
    _wait_state(page, "late", "left")
    expect(page.locator("#timeline li", has_text="spoke.left").filter(has_text="late")).to_have_count(1)
    assert _same_page(page)


def test_revoke_a_spoke_from_the_page(page: Any, cluster: Cluster) -> None:
    hub = cluster.hub
    victim = cluster.new_spoke("victim")
    victim.join()
    sign_in(page, hub, "admin", cluster.password)
    _wait_state(page, "victim", "connected")
    _mark_page(page)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{SPOKE_ROW.format('victim')} button:text('Revoke')")
    _wait_state(page, "victim", "revoked")
    assert page.locator(f"{SPOKE_ROW.format('victim')} button").count() == 0
    assert victim.proc is not None
    victim.proc.wait(30)  # a revoked spoke stops instead of retrying forever
    assert hub.spoke_row("victim")["revoked"]  # type: ignore[index]
    page.wait_for_selector("#timeline li >> text=spoke.revoked")
    assert _same_page(page)


def test_open_a_box_and_run_a_command(page: Any, cluster: Cluster, home_spoke: Any, sandbox_image: str) -> None:
    hub = cluster.hub
    box = hub.client().request("POST", "/api/boxes", {"spoke": home_spoke.name, "image": sandbox_image})
    sign_in(page, hub, "admin", cluster.password)
    page.click(f"#boxes a:text('{box['id']}')")
    page.wait_for_selector("#detail:not([hidden])")
    assert page.locator("#detail-title").inner_text() == f"Box {box['id']}"
    page.wait_for_selector("#detail .stats:text-matches('CPU .* memory .* processes')")

    # Output streams in as the command prints, before it ends.
    page.fill("#detail input[name=cmd]", "echo first; sleep 3; echo second")
    page.click("#detail form.exec button[type=submit]")
    page.wait_for_selector("#detail .exec-output .stdout:text('first')")
    assert page.locator("#detail .exit").inner_text() == "running…"
    page.wait_for_selector("#detail .exit:text('exit code 0')")
    assert page.locator("#detail .exec-output").inner_text() == "first\nsecond\n"

    page.fill("#detail input[name=cmd]", "echo out; echo '<b>err</b>' >&2; exit 3")
    page.press("#detail input[name=cmd]", "Enter")
    page.wait_for_selector("#detail .exit:text('exit code 3')")
    assert page.locator("#detail .exec-output .stdout").inner_text() == "out\n"
    assert page.locator("#detail .exec-output .stderr").inner_text() == "<b>err</b>\n"
    assert page.locator("#detail .exec-output b").count() == 0
    page.wait_for_selector(f"#boxes td[data-cpu='{box['id']}']:text-matches('%')")
    page.locator("#detail").screenshot(path=str(SCREENSHOTS / "box.png"))

    # Logs of the box (its main process' output): empty at first, then what it printed.
    expect(page.locator("#detail pre.logs")).to_have_text("(no output yet)")
    page.fill("#detail input[name=cmd]", "echo said-by-the-main-process > /proc/1/fd/1")
    page.press("#detail input[name=cmd]", "Enter")
    page.wait_for_selector("#detail .exit:text('exit code 0')")
    page.click("#detail button:text('Reload logs')")
    expect(page.locator("#detail pre.logs")).to_have_text("said-by-the-main-process\n")
    page.click("#detail-close")
    assert page.locator("#detail").is_hidden()


def test_admin_keys_users_and_tokens_from_the_page(page: Any, cluster: Cluster) -> None:
    hub = cluster.hub
    sign_in(page, hub, "admin", cluster.password)
    page.on("dialog", lambda dialog: dialog.accept())

    # An API key, shown once, that really works with the role chosen.
    page.fill("#key-new input[name=name]", "ci-reader")
    page.select_option("#key-new select[name=role]", "viewer")
    page.click("#key-new button[type=submit]")
    expect(page.locator("#key-value")).to_have_value(re.compile(r"^shk_"))
    key = page.locator("#key-value").input_value()
    assert key.startswith("shk_")
    reader = HubClient(hub.url, key, pin=hub.client().pin)
    assert reader.request("GET", "/api/spokes") is not None
    with pytest.raises(ApiError) as refused:
        reader.request("POST", "/api/tokens", {"name": "nope"})
    assert refused.value.status == 403
    row = page.locator("#apikeys tr", has_text="ci-reader")
    expect(row).to_contain_text("viewer")
    row.locator("button:text('Revoke')").click()
    expect(row).to_have_count(0)
    wait_until(lambda: _refused(reader), what="the revoked key refused")

    # A user with a password the hub made, shown once; it signs in; then it is removed.
    page.fill("#user-new input[name=name]", "olga")
    page.select_option("#user-new select[name=role]", "operator")
    page.click("#user-new button[type=submit]")
    expect(page.locator("#user-new .msg")).to_have_text("user olga added (operator)")
    expect(page.locator("#user-password")).not_to_have_value("")
    password = page.locator("#user-password").input_value()
    assert len(password) >= 12
    assert Web(hub).sign_in("olga", password).status == 200
    page.locator("#users tr", has_text="olga").locator("button:text('Remove')").click()
    expect(page.locator("#users tr", has_text="olga")).to_have_count(0)
    assert Web(hub).sign_in("olga", password).status == 401

    # A token revoked before use.
    page.fill("#token-new input[name=name]", "never")
    page.click("#token-new button[type=submit]")
    token_row = page.locator("#tokens tr[data-state='valid']", has_text="never")
    token_row.locator("button:text('Revoke')").click()
    expect(page.locator("#tokens tr[data-state='revoked']", has_text="never")).to_have_count(1)
    # A bad name: the hub's message, as it says it.
    page.fill("#token-new input[name=name]", "-Bad")
    page.evaluate("document.querySelector('#token-new input[name=name]').removeAttribute('pattern')")
    page.click("#token-new button[type=submit]")
    expect(page.locator("#token-new .msg")).to_contain_text("bad spoke name")


def _refused(client: HubClient) -> bool:
    try:
        client.request("GET", "/api/spokes")
        return False
    except ApiError as err:
        return err.status == 401


def test_a_viewer_sees_no_admin_controls_and_the_api_refuses_them(page: Any, cluster: Cluster,
                                                                 home_spoke: Any) -> None:
    hub = cluster.hub
    hub.client().request("POST", "/api/users", {"name": "vera", "password": "viewer-password-1",
                                               "role": "viewer"})
    sign_in(page, hub, "vera", "viewer-password-1")
    assert page.locator("#who").inner_text() == "vera (viewer)"
    page.wait_for_selector(f"{SPOKE_ROW.format(home_spoke.name)}[data-state='connected']")
    for section in ("#tokens", "#apikeys", "#users", "#box-new"):
        assert page.locator(section).is_hidden(), section
    assert page.locator("#spokes button, #boxes tbody button").count() == 0
    # The API says no all the same, with the hub's own message.
    refused = page.evaluate("""async () => {
        const session = await (await fetch('/api/session')).json();
        const post = await fetch('/api/tokens', {method: 'POST', body: JSON.stringify({name: 'x'}),
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf}});
        const list = await fetch('/api/tokens');
        return [post.status, (await post.json()).error, list.status];
    }""")
    assert refused[0] == 403 and refused[2] == 403
    assert refused[1]["code"] == "denied" and "admin role" in refused[1]["message"]
    goto(page, hub.url + "/chat")
    page.wait_for_selector("#who:not(:empty)")
    assert page.locator("#composer").is_hidden() and page.locator("#new-chat").is_hidden()


def test_an_operator_runs_things_but_administers_nothing(page: Any, cluster: Cluster) -> None:
    hub = cluster.hub
    hub.client().request("POST", "/api/users", {"name": "otto", "password": "operator-password-1",
                                               "role": "operator"})
    sign_in(page, hub, "otto", "operator-password-1")
    assert page.locator("#box-new").is_visible()
    for section in ("#tokens", "#apikeys", "#users"):
        assert page.locator(section).is_hidden(), section
    assert page.locator("#spokes button:text('Revoke')").count() == 0


def test_sign_out_ends_the_session_on_the_hub(page: Any, cluster: Cluster) -> None:
    hub = cluster.hub
    sign_in(page, hub, "admin", cluster.password)
    cookies = page.context.cookies()
    (session,) = [c for c in cookies if c["name"] == "spokehub_session"]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    page.click("#signout")
    page.wait_for_url("**/signin")
    goto(page, hub.url + "/history")
    page.wait_for_url("**/signin?next=%2Fhistory")
    # The old cookie is dead on the hub, not only gone from this browser.
    page.context.add_cookies([session])
    status = page.evaluate("async () => (await fetch('/api/session')).status")
    assert status == 401


def test_the_dashboard_screenshot(page: Any, cluster: Cluster, home_spoke: Any) -> None:
    """Last: the dashboard with what the module made (spokes in several states, a box, a
    workstream waiting for approval, events)."""
    marker = cluster.llm.script("dash-shot", [Call("bash", {"command": "uname -a"}), Say("done")])
    cluster.hub.client().request("POST", "/api/ws", {"message": f"{marker} which kernel is this?",
                                                     "spoke": home_spoke.name})
    sign_in(page, cluster.hub, "admin", cluster.password)
    page.wait_for_selector(f"{SPOKE_ROW.format(home_spoke.name)}[data-state='connected']")
    expect(page.locator("#workstreams tr[data-state='attention']")).to_contain_text("1 waiting")
    expect(page.locator("#boxes td[data-mem]").first).to_contain_text("iB")
    wait_until(lambda: page.locator("#timeline li").count() > 3, what="events on the timeline")
    screenshot(page, "dashboard.png", full_page=True)
