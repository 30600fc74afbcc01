// Calls to the daemon's JSON API, with the bearer token the browser keeps.
//
// The token is asked for once (a password field), kept in localStorage and sent in the
// Authorization header of every call. It never goes into a URL. A 401 shows the prompt
// again, with a word on why.

import { h } from "./dom.js";

const TOKEN_KEY = "collector.token";

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function forgetToken() {
  localStorage.removeItem(TOKEN_KEY);
  showForget();
}

function showForget() {
  const button = document.querySelector("[data-testid=forget-token]");
  if (button) button.hidden = token() === null;
}

export function headers(extra = {}) {
  const kept = token();
  return kept ? { ...extra, Authorization: `Bearer ${kept}` } : extra;
}

let prompting = null;

// Show the token form and resolve once the user has entered one.
function askToken(wrong) {
  if (prompting) return prompting;
  prompting = new Promise((resolve) => {
    const input = h("input", {
      type: "password", name: "token", autocomplete: "current-password", required: true,
      placeholder: "token", "aria-label": "API token",
    });
    const form = h("form", { class: "card token-form", "data-testid": "token-form" },
      h("h2", {}, "This collector needs its token"),
      h("p", { class: "muted" },
        "It is the bearer token of the daemon ([server] token_file). It stays in this browser."),
      wrong ? h("p", { class: "bad", "data-testid": "token-error" }, "That token was refused.") : null,
      // For password managers: the token belongs to this collector.
      h("input", { type: "text", name: "username", autocomplete: "username", value: location.host,
        hidden: true, readonly: true }),
      h("div", { class: "row" }, input, h("button", { type: "submit" }, "Open")),
    );
    // The form stands in front of the page, which stays as it is underneath (a page
    // may have built its frame before its first call).
    const main = document.getElementById("app");
    const before = document.body.dataset.state;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      localStorage.setItem(TOKEN_KEY, input.value.trim());
      showForget();
      form.remove();
      main.hidden = false;
      document.body.dataset.state = before;
      prompting = null;
      resolve();
    });
    main.hidden = true;
    main.before(form);
    document.body.dataset.state = "token";
    input.focus();
  });
  return prompting;
}

// GET/POST/DELETE a /v1/ route; answers the parsed JSON (or text for non-JSON answers).
export async function api(path, { method = "GET", body, signal } = {}) {
  for (;;) {
    const init = { method, headers: headers({ Accept: "application/json" }), signal };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      await askToken(token() !== null);
      continue;
    }
    const type = resp.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await resp.json() : await resp.text();
    if (!resp.ok) {
      throw new ApiError(resp.status, data && data.error, data && data.detail);
    }
    return data;
  }
}

// An open stream (GET /v1/live): fetch with the token, since EventSource cannot send it.
// `onEvent(name, data)` for each event; resolves when the stream ends.
export async function stream(path, onEvent, { signal } = {}) {
  for (;;) {
    const resp = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
    if (resp.status === 401) {
      await askToken(token() !== null);
      continue;
    }
    if (!resp.ok || !resp.body) {
      let detail = `HTTP ${resp.status}`;
      try {
        detail = (await resp.json()).detail || detail;
      } catch { /* not JSON */ }
      throw new ApiError(resp.status, "stream_failed", detail);
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }
}

export function setUpToken() {
  showForget();
  const button = document.querySelector("[data-testid=forget-token]");
  button?.addEventListener("click", () => {
    forgetToken();
    location.reload();
  });
}
