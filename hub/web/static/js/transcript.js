// One workstream's transcript, built from its event log (docs/agents.md "Events").
//
// The log is the source of truth and this view is a fold over it: a reply streams in as
// `text_delta` events and is replaced by its `assistant_message`; a tool call is a block that
// fills in as `approval_requested`, `approval_decided` and `tool_result` arrive. Replaying an
// old workstream from seq 0 draws exactly what a live viewer saw. Events at or below the last
// seq applied are ignored, so a resumed stream can never draw anything twice. Model and tool
// text goes in as text (replies through the DOM-building Markdown renderer), never as HTML.

import {api, enc} from "./api.js";
import {clock, h, say} from "./dom.js";
import {renderMarkdown} from "./markdown.js";

const DECIDED = new Set(["approval_decided", "approval_resolved", "approval_resolved_by_hub"]);

function pretty(args) {
  if (args && typeof args === "object" && Object.keys(args).length === 1 && typeof args.command === "string") {
    return `$ ${args.command}`;
  }
  try { return JSON.stringify(args, null, 2); } catch { return String(args); }
}

export class Transcript {
  /** root: the element to draw in; canAct: approve/deny buttons shown;
   * onChange({state, tokens, last}) after each event. */
  constructor(root, wsId, {canAct = false, onChange = () => {}} = {}) {
    this.root = root;
    this.wsId = wsId;
    this.canAct = canAct;
    this.onChange = onChange;
    this.last = 0;
    this.state = "";
    this.tokens = {input: 0, output: 0};
    this.streaming = null;  // {node, text} of the reply being streamed
    this.calls = new Map();  // call_id → the parts of its block
    this.waitingLine = null;
    this.pendingFrame = 0;
    root.classList.add("transcript");
  }

  apply(event) {
    if (!(event.seq > this.last)) return;
    this.last = event.seq;
    const d = event.data || {};
    const handler = this[`on_${event.kind}`];
    if (handler) handler.call(this, d, event);
    else if (DECIDED.has(event.kind)) this.decided(d, event.kind);
    this.onChange({state: this.state, tokens: this.tokens, last: this.last, kind: event.kind});
  }

  add(node) {
    const stick = this.root.scrollHeight - this.root.scrollTop - this.root.clientHeight < 40;
    this.root.append(node);
    if (stick) this.root.scrollTop = this.root.scrollHeight;
    return node;
  }

  line(kind, text, ts) {
    return this.add(h("div", {class: `line ${kind}`}, ts ? h("span", {class: "ts", text: clock(ts)}) : null, text));
  }

  on_user_message(d, e) {
    this.endStream();
    this.add(h("div", {class: "msg-user", data: {seq: e.seq}},
      h("div", {class: "who", text: "you"}), h("div", {class: "text", text: d.text || ""})));
  }

  on_text_delta(d) {
    if (!this.streaming) {
      const body = h("div", {class: "md"});
      const node = this.add(h("div", {class: "msg-assistant streaming"}, h("div", {class: "who", text: "agent"}), body));
      this.streaming = {node, body, text: ""};
    }
    this.streaming.text += d.text || "";
    // Re-render the Markdown at most once a frame: deltas come faster than that.
    if (!this.pendingFrame) {
      this.pendingFrame = requestAnimationFrame(() => {
        this.pendingFrame = 0;
        if (this.streaming) this.streaming.body.replaceChildren(renderMarkdown(this.streaming.text));
      });
    }
  }

  on_assistant_message(d) {
    const text = d.text || "";
    let node = this.streaming?.node;
    this.streaming = null;
    if (!text.trim()) { node?.remove(); return; }
    const body = h("div", {class: "md"}, renderMarkdown(text));
    if (node) {
      node.classList.remove("streaming");
      node.querySelector(".md").replaceWith(body);
    } else {
      node = this.add(h("div", {class: "msg-assistant"}, h("div", {class: "who", text: "agent"}), body));
    }
  }

  endStream() {
    if (this.streaming) this.on_assistant_message({text: this.streaming.text});
  }

  on_tool_call(d) {
    this.endStream();
    const status = h("span", {class: "call-status", text: d.approval === "ask" ? "asks for approval" : "running…"});
    const actions = h("div", {class: "approval", hidden: true});
    const output = h("pre", {class: "tool-output", hidden: true});
    const block = this.add(h("div", {class: "tool-call", data: {callId: d.call_id}},
      h("div", {class: "tool-head"}, h("span", {class: "tool-name", text: d.tool}), status),
      h("pre", {class: "tool-args", text: pretty(d.args)}), actions, output));
    this.calls.set(d.call_id, {block, status, actions, output});
  }

  call(d) {
    if (!this.calls.has(d.call_id)) this.on_tool_call({call_id: d.call_id, tool: d.tool || "tool", args: d.args || {}});
    return this.calls.get(d.call_id);
  }

  on_approval_requested(d) {
    const c = this.call(d);
    c.status.textContent = "waiting for approval";
    c.block.classList.add("waiting");
    c.actions.hidden = false;
    c.actions.replaceChildren();
    if (!this.canAct) {
      c.actions.append(h("span", {class: "muted", text: "an operator must approve or deny this call"}));
      return;
    }
    const reason = h("input", {type: "text", placeholder: "reason (optional)", class: "reason",
      attrs: {"aria-label": "reason"}});
    const out = h("span", {class: "msg", hidden: true, attrs: {role: "alert"}});
    const decide = (approve) => async (ev) => {
      const buttons = c.actions.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await api("POST", `/api/ws/${enc(this.wsId)}/approvals/${enc(d.call_id)}`,
          {approve, reason: reason.value});
        // The decision's own event may already be here (it carries the reason): only say
        // something if it is not.
        if (c.block.classList.contains("waiting")) c.status.textContent = approve ? "approved" : "denied";
      } catch (err) {
        say(out, err.message, "error");
        buttons.forEach((b) => { b.disabled = false; });
      }
      ev.preventDefault();
    };
    c.actions.append(
      h("button", {class: "approve", type: "button", text: "Approve", on: {click: decide(true)}}),
      h("button", {class: "deny danger", type: "button", text: "Deny", on: {click: decide(false)}}),
      reason, out);
  }

  decided(d, kind) {
    const c = this.call(d);
    c.block.classList.remove("waiting");
    c.actions.hidden = true;
    c.actions.replaceChildren();
    const by = kind === "approval_resolved_by_hub" ? " by the hub" : "";
    if (d.approved) c.status.textContent = "approved, running…";
    else c.status.textContent = `denied${by}${d.reason ? `: ${d.reason}` : ""}`;
    c.block.classList.toggle("denied", !d.approved);
  }

  on_tool_result(d) {
    const c = this.call(d);
    c.block.classList.remove("waiting");
    c.actions.hidden = true;
    c.output.hidden = false;
    c.output.textContent = d.output ?? "";
    c.output.classList.toggle("error", Boolean(d.is_error));
    if (!c.block.classList.contains("denied")) c.status.textContent = d.is_error ? "failed" : "done";
  }

  on_state(d, e) {
    this.state = d.state;
    if (d.state === "error" && d.error) this.line("error", `error: ${d.error}`, e.ts);
    if (d.state !== "queued" && this.waitingLine) { this.waitingLine.remove(); this.waitingLine = null; }
    if (["idle", "error", "closed"].includes(d.state)) this.endStream();
    if (d.state === "closed") this.line("notice", "closed", e.ts);
  }

  on_assigned(d, e) { this.line("notice", `on spoke ${d.spoke}`, e.ts); }
  on_lease_returned(d, e) { this.line("notice", `spoke ${d.spoke} gave it back: ${d.reason}`, e.ts); }
  on_usage(d) {
    this.tokens.input += d.input_tokens || 0;
    this.tokens.output += d.output_tokens || 0;
  }
  on_error(d, e) { this.endStream(); this.line("error", `error: ${d.message}`, e.ts); }
  on_cancelled(d, e) { this.endStream(); this.line("notice", "cancelled", e.ts); }
  on_notice(d, e) {
    // A retried model call (d.retry) voids the text streamed so far: the answer starts again.
    if (d.retry && this.streaming) { this.streaming.node.remove(); this.streaming = null; }
    this.line("notice", d.message, e.ts);
  }
  on_waiting(d, e) {
    if (!d.reason) { this.waitingLine?.remove(); this.waitingLine = null; return; }
    if (this.waitingLine) this.waitingLine.remove();
    this.waitingLine = this.line("waiting", d.reason, e.ts);
  }
}
