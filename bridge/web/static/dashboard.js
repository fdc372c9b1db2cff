// Live calls: follows /api/live (Server-Sent Events) and redraws each call's running transcript,
// tool calls included.
// Plain JavaScript, no build step. The server renders everything else.
(function () {
  "use strict";
  const root = document.getElementById("live");
  if (!root) return;
  const only = root.dataset.only || null; // the call page of a live call shows just that call
  // call_sid -> {call, turns: Map(item_id -> turn), toolCalls: Map(call_id -> tool call), events: []}
  const calls = new Map();

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function elapsed(startedAt) {
    if (!startedAt) return "";
    const s = Math.max(0, Math.floor(Date.now() / 1000 - startedAt));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  function card(state) {
    const call = state.call;
    const article = el("article", "live-call");
    article.dataset.callSid = call.call_sid;
    const header = el("header");
    const link = el("a", "", (call.from_number || "?") + " → " + (call.to_number || "?"));
    link.href = "/calls/" + encodeURIComponent(call.call_sid);
    header.append(link, " ", el("span", "profile", call.profile || ""), " ");
    const timer = el("span", "elapsed", elapsed(call.started_at));
    timer.dataset.startedAt = call.started_at || "";
    header.append(timer);
    const transcript = el("ol", "transcript");
    const items = [...state.turns.values(), ...state.toolCalls.values()];
    items.sort((a, b) => a.started_at - b.started_at);
    for (const item of items) {
      transcript.append("call_id" in item ? toolCallItem(item) : turnItem(item));
    }
    article.append(header, transcript);
    const bargeIns = state.events.filter((e) => e.kind === "barge_in").length;
    if (bargeIns) article.append(el("p", "events", bargeIns + " barge-in" + (bargeIns > 1 ? "s" : "")));
    return article;
  }

  function turnItem(turn) {
    const li = el("li", "turn " + turn.role + (turn.interrupted ? " interrupted" : ""));
    li.dataset.itemId = turn.item_id;
    li.append(el("span", "who", turn.role), " ");
    li.append(el("span", "text", turn.text === null ? "(not kept)" : turn.text));
    if (turn.interrupted) li.append(" ", el("span", "badge bad", "interrupted"));
    if (turn.latency_ms !== null && turn.latency_ms !== undefined) {
      li.append(" ", el("span", "latency badge", "answered in " + Math.round(turn.latency_ms) + " ms"));
    }
    return li;
  }

  // A tool call: its name and kind, then "running…" until it ends, then how it ended and how long.
  function toolCallItem(tool) {
    const li = el("li", "tool-call outcome-" + tool.outcome);
    li.dataset.callId = tool.call_id;
    li.append(el("span", "who", "tool"), " ", el("code", "tool-name", tool.name), " ");
    li.append(el("span", "badge", tool.kind), " ");
    const running = tool.outcome === "running";
    let outcome = running ? "running…" : tool.outcome;
    if (!running && tool.duration_ms !== null && tool.duration_ms !== undefined) {
      outcome += " in " + Math.round(tool.duration_ms) + " ms";
    }
    const bad = tool.outcome === "error" || tool.outcome === "cancelled";
    li.append(el("span", "badge outcome" + (bad ? " bad" : ""), outcome));
    if (tool.holding_phrase) li.append(" ", el("span", "badge", "holding phrase"));
    if (tool.error) li.append(" ", el("span", "bad", tool.error));
    return li;
  }

  function shown(callSid) {
    return !only || callSid === only;
  }

  function placeholder() {
    const cards = root.querySelectorAll(".live-call").length;
    const empty = root.querySelector(".empty");
    if (!cards && !empty) root.append(el("p", "empty", only ? "Waiting for the call…" : "No calls right now."));
    if (cards && empty) empty.remove();
    const count = document.getElementById("live-count");
    if (count) count.textContent = String(calls.size);
  }

  function draw() {
    root.replaceChildren(...Array.from(calls.values()).filter((s) => shown(s.call.call_sid)).map(card));
    placeholder();
  }

  // Redraw one call only: transcript deltas arrive many times a second per call.
  function drawCall(callSid) {
    if (!shown(callSid)) return;
    const old = Array.from(root.querySelectorAll(".live-call")).find((a) => a.dataset.callSid === callSid);
    const state = calls.get(callSid);
    if (!state) {
      if (old) old.remove();
    } else if (old) {
      old.replaceWith(card(state));
    } else {
      root.append(card(state));
    }
    placeholder();
  }

  function entry(callSid) {
    let state = calls.get(callSid);
    if (!state) {
      state = { call: { call_sid: callSid }, turns: new Map(), toolCalls: new Map(), events: [] };
      calls.set(callSid, state);
    }
    return state;
  }

  // The history table is server-rendered. When a call ends, fetch this page again and swap in
  // its table once the call log holds the finished record (the log writes in the background).
  let historyBody = document.querySelector("section.history tbody");
  async function refreshHistory(callSid, attempt) {
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.ok) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("section.history tbody");
        const row = fresh && fresh.querySelector('tr[data-call-sid="' + CSS.escape(callSid) + '"]');
        const finished = row && !row.querySelector(".badge"); // no longer "live"
        if (fresh && (finished || attempt >= 5)) {
          historyBody.replaceWith(fresh);
          historyBody = fresh;
          return;
        }
      }
    } catch (error) {
      // offline for a moment: the next attempt tries again
    }
    if (attempt < 5) setTimeout(() => refreshHistory(callSid, attempt + 1), 1000);
  }

  const source = new EventSource("/api/live");
  source.addEventListener("snapshot", (e) => {
    calls.clear();
    for (const live of JSON.parse(e.data).calls) {
      calls.set(live.call.call_sid, {
        call: live.call,
        turns: new Map(live.turns.map((t) => [t.item_id, t])),
        toolCalls: new Map((live.tool_calls || []).map((t) => [t.call_id, t])),
        events: live.events,
      });
    }
    draw();
  });
  source.addEventListener("call_started", (e) => {
    const call = JSON.parse(e.data).call;
    entry(call.call_sid).call = call;
    drawCall(call.call_sid);
  });
  source.addEventListener("turn", (e) => {
    const data = JSON.parse(e.data);
    entry(data.call_sid).turns.set(data.turn.item_id, data.turn);
    drawCall(data.call_sid);
  });
  source.addEventListener("tool_call", (e) => {
    const data = JSON.parse(e.data);
    entry(data.call_sid).toolCalls.set(data.tool_call.call_id, data.tool_call);
    drawCall(data.call_sid);
  });
  source.addEventListener("event", (e) => {
    const data = JSON.parse(e.data);
    const events = entry(data.call_sid).events;
    events.push(data.event);
    if (events.length > 50) events.shift();
    drawCall(data.call_sid);
  });
  source.addEventListener("call_ended", (e) => {
    const data = JSON.parse(e.data);
    calls.delete(data.call_sid);
    drawCall(data.call_sid);
    if (only === data.call_sid) setTimeout(() => location.reload(), 1000); // the final record
    else if (!only && historyBody) setTimeout(() => refreshHistory(data.call_sid, 1), 500);
  });

  setInterval(() => {
    for (const timer of root.querySelectorAll(".elapsed")) {
      timer.textContent = elapsed(Number(timer.dataset.startedAt));
    }
  }, 1000);
})();

// The call page's recording: clicking a turn (on the timeline or in the conversation) plays
// from its start, clicking elsewhere on the timeline plays from that moment, and a line on the
// timeline follows playback. Turn times and the recording both count from the stream's start.
(function () {
  "use strict";
  const audio = document.getElementById("recording");
  if (!audio) return;
  const svg = document.querySelector("svg.timeline");
  const conversation = document.querySelector("ol.conversation");
  const left = svg ? Number(svg.dataset.left) : 0;
  const scale = svg ? Number(svg.dataset.scale) : 0;

  function playFrom(seconds) {
    audio.currentTime = Math.max(0, seconds);
    const playing = audio.play();
    if (playing) playing.catch(() => {}); // refused (autoplay policy): the position is still set
  }

  if (conversation) {
    conversation.addEventListener("click", (event) => {
      const turn = event.target.closest("li[data-start]");
      if (!turn || String(window.getSelection() || "")) return; // selecting text is not a click
      playFrom(Number(turn.dataset.start));
    });
  }
  if (!svg || !scale) return;

  svg.addEventListener("click", (event) => {
    const turn = event.target.closest("[data-start]");
    if (turn) {
      playFrom(Number(turn.dataset.start));
      return;
    }
    const point = svg.createSVGPoint(); // the click in the picture's own units
    point.x = event.clientX;
    point.y = event.clientY;
    const x = point.matrixTransform(svg.getScreenCTM().inverse()).x;
    if (x >= left) playFrom((x - left) / scale);
  });

  const playhead = document.createElementNS("http://www.w3.org/2000/svg", "line");
  playhead.setAttribute("class", "playhead");
  playhead.setAttribute("y1", "4");
  playhead.setAttribute("y2", svg.dataset.bottom || "0");
  svg.append(playhead);
  const right = svg.viewBox.baseVal.width - 1; // a recording longer than the picture: stop there
  function place() {
    const x = Math.min(right, left + Math.max(0, audio.currentTime) * scale).toFixed(1);
    playhead.setAttribute("x1", x);
    playhead.setAttribute("x2", x);
  }
  for (const name of ["timeupdate", "seeked", "loadedmetadata"]) audio.addEventListener(name, place);
  place();
})();
