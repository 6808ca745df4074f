/* The chat playground (templates/playground/index.html): plain JavaScript, nothing loaded from
 * elsewhere. It speaks the WebSocket protocol of /v1/ws/chat (docs/websocket.md), signed in by
 * the page's session cookie, and rates finished replies through POST /playground/feedback.
 *
 * One reply streams at a time. The conversation sent with each request is every finished
 * exchange so far; a cancelled or failed reply is shown but not sent back to the model.
 */
(function () {
  "use strict";

  const root = document.getElementById("playground");
  if (!root) return;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("pg-status"), model: $("pg-model"), clear: $("pg-clear"), transcript: $("pg-transcript"),
    form: $("pg-form"), input: $("pg-input"), send: $("pg-send"), cancel: $("pg-cancel"),
    system: $("pg-system"), temperature: $("pg-temperature"), maxTokens: $("pg-max-tokens"),
  };
  const AUTH_TIMEOUT_MS = 5000;
  const CLOSE_UNAUTHENTICATED = 4401;

  const state = {
    socket: null,
    ready: false,
    stopped: false,     // the server refused the session: reconnecting cannot help
    retryMs: 500,
    history: [],        // finished exchanges: {user, assistant}
    turns: new Map(),   // request id -> turn, while it is in flight
    current: null,      // the turn streaming now
    counter: 0,
    connections: 0,     // sockets signed in so far (shown as data-connections on the status)
  };

  // --- connection ---------------------------------------------------------------------------------
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + root.dataset.wsPath);
    state.socket = socket;
    state.ready = false;
    setStatus("connecting", "Connecting…");
    const authTimer = setTimeout(() => {
      if (!state.ready && state.socket === socket) {
        setStatus("failed", "Not signed in to the chat socket — reload the page and log in again.");
      }
    }, AUTH_TIMEOUT_MS);
    socket.addEventListener("message", (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      handle(event);
    });
    socket.addEventListener("close", (closed) => {
      clearTimeout(authTimer);
      if (state.socket !== socket) return;
      state.ready = false;
      for (const turn of state.turns.values()) finish(turn, "error", "The connection closed before the reply finished.");
      if (closed.code === CLOSE_UNAUTHENTICATED) state.stopped = true;
      if (state.stopped) {
        setStatus("failed", "Signed out of the chat socket — reload the page and log in again.");
      } else {
        setStatus("offline", "Disconnected — reconnecting…");
        setTimeout(connect, state.retryMs);
        state.retryMs = Math.min(state.retryMs * 2, 10000);
      }
      refresh();
    });
  }

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.status.textContent = text;
  }

  function handle(event) {
    const turn = event.id != null ? state.turns.get(event.id) : null;
    switch (event.type) {
      case "auth.ok":
        state.ready = true;
        state.retryMs = 500;
        ui.status.dataset.connections = String(++state.connections);
        setStatus("ready", "Connected · tenant " + event.tenant);
        refresh();
        break;
      case "chat.delta":
        if (turn) delta(turn, event.content || "");
        break;
      case "chat.done":
        if (turn) done(turn, event);
        break;
      case "chat.cancelled":
        if (turn) finish(turn, "cancelled", "Cancelled");
        break;
      case "error":
        if (turn) {
          finish(turn, "error", errorText(event));
        } else if (event.id == null) {
          setStatus("failed", errorText(event));
        }  // else: an answer about a reply already finished (a cancel that came too late)
        break;
    }
  }

  // --- sending ------------------------------------------------------------------------------------
  function send() {
    const text = ui.input.value.trim();
    if (!text || !canSend()) return;
    const id = "pg-" + Date.now().toString(36) + "-" + (++state.counter);
    const request = { type: "chat.request", id: id, model: ui.model.value, messages: conversation(text) };
    const temperature = ui.temperature.value.trim();
    const maxTokens = ui.maxTokens.value.trim();
    if (temperature !== "") request.temperature = Number(temperature);
    if (maxTokens !== "") request.max_tokens = parseInt(maxTokens, 10);

    clearEmpty();
    bubble("user", "You", text);
    const turn = assistantTurn(id, text, request.model);
    state.turns.set(id, turn);
    state.current = turn;
    state.socket.send(JSON.stringify(request));
    ui.input.value = "";
    refresh();
  }

  function conversation(text) {
    const messages = [];
    const system = ui.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    for (const exchange of state.history) {
      messages.push({ role: "user", content: exchange.user }, { role: "assistant", content: exchange.assistant });
    }
    messages.push({ role: "user", content: text });
    return messages;
  }

  function cancel() {
    const turn = state.current;
    if (!turn || !state.ready) return;
    state.socket.send(JSON.stringify({ type: "chat.cancel", id: turn.id }));
    turn.stateLabel.textContent = "Cancelling…";
    ui.cancel.disabled = true;
  }

  function canSend() {
    return state.ready && !state.current && ui.model.value !== "";
  }

  function refresh() {
    ui.send.disabled = !canSend();
    ui.cancel.hidden = !state.current;
    ui.cancel.disabled = !state.current || !state.ready;
    ui.clear.disabled = !!state.current;
    ui.model.disabled = ui.model.options.length === 0;
  }

  // --- the transcript -----------------------------------------------------------------------------
  function bubble(role, label, text) {
    const node = element("div", "pg-msg " + role);
    node.append(element("div", "who", label));
    const body = element("div", "text");
    body.append(document.createTextNode(text));
    node.append(body);
    ui.transcript.append(node);
    scrollDown(true);
    return { node: node, text: body.firstChild };
  }

  function assistantTurn(id, userText, model) {
    const { node, text } = bubble("assistant", model, "");
    node.dataset.requestId = id;
    node.dataset.state = "waiting";
    const meta = element("div", "pg-meta");
    const stateLabel = element("span", "state", "Waiting for the first token…");
    meta.append(stateLabel);
    node.append(meta);
    return { id: id, userText: userText, node: node, text: text, meta: meta, stateLabel: stateLabel, content: "" };
  }

  function delta(turn, content) {
    if (!content) return;
    const follow = nearBottom();
    if (turn.node.dataset.state === "waiting") {
      turn.node.dataset.state = "streaming";
      turn.stateLabel.textContent = "Streaming…";
    }
    // Replies often open with a space (tokens carry their leading space); don't show it as indent.
    const shown = turn.content.trim() ? content : content.replace(/^\s+/, "");
    turn.content += content;
    turn.text.appendData(shown);
    scrollDown(follow);
  }

  function done(turn, event) {
    const usage = event.usage || {};
    turn.node.dataset.responseId = event.response_id || "";
    turn.meta.replaceChildren(
      metaItem("served", (event.model || "") + (event.provider ? " via " + event.provider : "")),
      metaItem("cost", "Cost " + formatUsd(event.cost_usd)),
      metaItem("latency", "Latency " + formatMs(event.latency_ms)),
      metaItem("ttft", "TTFT " + formatMs(event.ttft_ms)),
      metaItem("tokens", (usage.prompt_tokens || 0) + " + " + (usage.completion_tokens || 0) + " tokens"),
    );
    turn.node.dataset.state = "done";
    state.history.push({ user: turn.userText, assistant: turn.content });
    if (event.response_id) turn.node.append(feedbackBar(event.response_id));
    release(turn);
  }

  function finish(turn, kind, message) {
    turn.node.dataset.state = kind;
    turn.stateLabel.textContent = message;
    turn.stateLabel.className = "state state-" + kind;
    release(turn);
  }

  function release(turn) {
    state.turns.delete(turn.id);
    if (state.current === turn) state.current = null;
    refresh();
    if (!state.current) ui.input.focus();
  }

  function metaItem(name, text) {
    const item = element("span", "pg-" + name, text);
    item.dataset.field = name;
    return item;
  }

  function clearEmpty() {
    const empty = ui.transcript.querySelector(".pg-empty");
    if (empty) empty.remove();
  }

  function nearBottom() {
    const box = ui.transcript;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function scrollDown(follow) {
    if (follow) ui.transcript.scrollTop = ui.transcript.scrollHeight;
  }

  // --- feedback -----------------------------------------------------------------------------------
  function feedbackBar(responseId) {
    const bar = element("div", "pg-feedback");
    const up = element("button", "thumb up");
    const down = element("button", "thumb down");
    const note = element("span", "note muted", "Was this reply useful?");
    for (const [button, rating, label] of [[up, 1, "Good reply"], [down, -1, "Bad reply"]]) {
      button.append(thumbIcon(), document.createTextNode(rating > 0 ? "Good" : "Bad"));
      button.type = "button";
      button.dataset.rating = String(rating);
      button.title = label;
      button.setAttribute("aria-label", label);
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => rate(bar, responseId, rating));
    }
    bar.append(up, down, note);
    return bar;
  }

  async function rate(bar, responseId, rating) {
    const buttons = bar.querySelectorAll("button");
    const note = bar.querySelector(".note");
    buttons.forEach((b) => { b.disabled = true; });
    note.className = "note muted";
    note.textContent = "Saving…";
    try {
      const response = await fetch(root.dataset.feedbackUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": root.dataset.csrfToken },
        body: JSON.stringify({ response_id: responseId, rating: rating }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error((body.error && body.error.message) || "HTTP " + response.status);
      bar.dataset.rating = String(body.rating);
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.rating === String(body.rating))));
      note.className = "note saved";
      note.textContent = body.rating > 0 ? "Saved: good reply" : "Saved: bad reply";
    } catch (error) {
      note.className = "note failed";
      note.textContent = "Not saved: " + error.message;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // Drawn here rather than with emoji, which not every system has a font for.
  function thumbIcon() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "icon");
    const cuff = document.createElementNS(ns, "rect");
    for (const [name, value] of [["x", 2], ["y", 10], ["width", 4], ["height", 11], ["rx", 1]]) cuff.setAttribute(name, value);
    const hand = document.createElementNS(ns, "path");
    hand.setAttribute("d", "M8 10 L11.5 3 C13 3 14 4 14 5.5 L13.5 9 H19.5 C20.9 9 21.8 10.3 21.5 11.6 L20 18.6 C19.8 19.5 19 20 18 20 H8 Z");
    svg.append(cuff, hand);
    return svg;
  }

  // --- formatting ---------------------------------------------------------------------------------
  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function formatUsd(value) {
    const amount = Number(value);
    if (!isFinite(amount)) return "—";
    if (amount === 0) return "$0";
    // Small amounts keep their significant digits: $0.0000123, not $0.00.
    return "$" + (amount >= 0.01 ? amount.toFixed(4) : amount.toFixed(8).replace(/0+$/, ""));
  }

  function formatMs(value) {
    return value == null ? "—" : Math.round(value).toLocaleString("en-US") + " ms";
  }

  function errorText(event) {
    const error = event.error || {};
    return "Error" + (event.status ? " " + event.status : "") + ": " + (error.message || "the request failed.");
  }

  // --- wiring -------------------------------------------------------------------------------------
  ui.form.addEventListener("submit", (event) => { event.preventDefault(); send(); });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.current) cancel();
  });
  ui.cancel.addEventListener("click", cancel);
  ui.clear.addEventListener("click", () => {
    if (state.current) return;
    state.history = [];
    ui.transcript.replaceChildren(element("p", "pg-empty muted", "New chat. Send a message to start."));
    ui.input.focus();
  });

  refresh();
  connect();
})();
