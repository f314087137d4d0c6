// The web console's script: fills the page frames the daemon renders from /api/v1 and sends every change through
// it, with the session cookie and the session's CSRF token. It holds no rule of its own; what the API refuses is
// shown in words, never worked around. No library, nothing loaded from elsewhere.
"use strict";

(() => {
  const page = document.body.dataset.page;
  const subject = document.body.dataset.subject;
  let csrf = null;

  class Failure extends Error {
    constructor(status, message, kind) {
      super(message);
      this.status = status;
      this.kind = kind;
    }
  }

  // What a marketer reads when the API says no: its own message (written for people), with what to do where the
  // status alone tells it.
  function words(status, message) {
    switch (status) {
      case 0:
        return "The service could not be reached. Check your network and try again in a moment.";
      case 403:
        return `You may not do this: ${message}`;
      case 429:
        return "Too many attempts. Wait a minute, then try again.";
      default:
        if (status >= 500) return `Something went wrong on the service's side: ${message}`;
        return message;
    }
  }

  async function loadSession() {
    const s = await api("GET", "/session");
    csrf = s.csrf_token;
    return s;
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    // Every change but signing in carries the session's CSRF token.
    if (method !== "GET" && !(method === "POST" && path === "/session")) {
      if (!csrf) await loadSession();
      headers["X-CSRF-Token"] = csrf;
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(`/api/v1${path}`, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new Failure(0, "");
    }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (r.status === 401 && page !== "sign-in") {
      location.href = `/sign-in?next=${encodeURIComponent(location.pathname)}`;
      throw new Failure(401, "Your session has ended; sign in again.");
    }
    if (!r.ok) {
      const message = data && data.error ? data.error.message : `the service answered ${r.status}`;
      throw new Failure(r.status, words(r.status, message), data && data.error ? data.error.kind : null);
    }
    return data;
  }

  // el("tr", {class: "x"}, "text", child...): text is always text, never HTML.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, "");
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  const $ = (sel, root = document) => root.querySelector(sel);
  const number = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  // A member's value as the source gave it: a NULL is no value at all, an empty string is empty.
  const memberText = (m) => (m === null || m === undefined ? "(no value)" : m === "" ? "(empty)" : m);
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function notice(text, kind = "info") {
    const n = $("#notice");
    if (!n) return;
    n.replaceChildren(text ? el("p", { class: kind }, text) : "");
  }

  // Shows a failure next to the form or in the page's notice area.
  function fail(e, where) {
    const text = e instanceof Failure ? e.message : `Something went wrong: ${e.message}`;
    const target = where ? $(".error", where) : null;
    if (target) target.textContent = text;
    else notice(text, "error");
  }

  // A change refused because the export is running: says so and offers a button that stops the run and goes ahead
  // (`again`, which asks with cancel_run). Any other failure, or a second refusal, is shown as it is.
  function offerToStopRun(e, where, label, again) {
    if (!(e instanceof Failure) || e.kind !== "running") return fail(e, where);
    const stop = el("button", { type: "button", class: "stop-run" }, label);
    stop.addEventListener("click", () => {
      stop.disabled = true;
      again();
    });
    const text =
      "This export is running now; nothing was changed. Wait for the run to finish, or stop it and go ahead: " +
      "the run is recorded as cancelled, and what it sent stays recorded. ";
    const target = (where && $(".error", where)) || $("#notice");
    target.replaceChildren(el("span", { class: "error" }, text), stop);
  }

  function formData(form) {
    const out = {};
    for (const [k, v] of new FormData(form).entries()) out[k] = typeof v === "string" ? v.trim() : v;
    return out;
  }

  // A button that asks to be pressed twice before it acts.
  function confirmTwice(button, question, action) {
    const label = button.textContent;
    let armed = false;
    button.addEventListener("click", async () => {
      if (!armed) {
        armed = true;
        button.textContent = question;
        button.classList.add("armed");
        setTimeout(() => {
          armed = false;
          button.textContent = label;
          button.classList.remove("armed");
        }, 6000);
        return;
      }
      armed = false;
      button.textContent = label;
      button.classList.remove("armed");
      await action();
    });
  }

  function table(headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty" }, empty);
    // Each cell knows its column's name, which a phone's narrow layout shows beside it instead of the header row.
    for (const row of rows.flat()) {
      [...row.children].forEach((cell, i) => {
        if (headers[i] && !cell.hasAttribute("colspan")) cell.dataset.label = headers[i];
      });
    }
    return el(
      "div",
      { class: "table" },
      el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)),
    );
  }

  const statusWords = {
    running: "Running",
    succeeded: "Succeeded",
    failed: "Failed",
    interrupted: "Interrupted",
    refused: "Stopped by the mass-removal guard",
    cancelled: "Cancelled",
  };
  // What started a run, in words (the run's trigger as recorded).
  const triggerWords = {
    api: "on demand",
    manual: "command line",
    schedule: "schedule",
    "trigger-file": "trigger file",
    "missed-schedule": "schedule (missed while stopped)",
  };

  // A run's status in words; a refusal says whether it was a guard's.
  function badge(run) {
    let text = statusWords[run.status] || run.status;
    if (run.status === "refused" && !run.stopped_by_guard) text = "Refused";
    return el("span", { class: `badge ${run.status}` }, text);
  }

  // Members added (new on a list), updated, already on a list the export adopted, removed and not sent: a run
  // summary carries them, a whole run has them per list.
  function runCounts(run) {
    if (!run) return { added: 0, updated: 0, alreadyOnList: 0, removed: 0, notSent: 0 };
    if (run.added !== undefined) {
      return {
        added: run.added,
        updated: run.updated || 0,
        alreadyOnList: run.already_on_list || 0,
        removed: run.removed,
        notSent: run.not_sent,
      };
    }
    const t = run.lists || [];
    const sum = (k) => t.reduce((a, x) => a + (x[k] || 0), 0);
    return {
      added: sum("added"),
      updated: sum("updated"),
      alreadyOnList: sum("already_on_list"),
      removed: sum("removed"),
      notSent: sum("invalid") + sum("rejected"),
    };
  }

  // "120 added, 68 updated, 3 removed": updated and already-on-the-list members only when there are some.
  function countsText(c) {
    return [
      `${number(c.added)} added`,
      c.updated ? `${number(c.updated)} updated` : null,
      c.alreadyOnList ? `${number(c.alreadyOnList)} already on the list` : null,
      `${number(c.removed)} removed`,
    ]
      .filter(Boolean)
      .join(", ");
  }

  // ---- progress of a run, polled until it ends --------------------------------------------------------------

  async function follow(runId, area, done) {
    const bar = el("progress", { max: 1, value: 0 });
    const text = el("span", { class: "progress-text" }, "Starting…");
    area.replaceChildren(el("div", { class: "progress", "data-run": runId }, bar, text));
    for (;;) {
      let run;
      try {
        run = await api("GET", `/runs/${runId}`);
      } catch (e) {
        fail(e);
        return;
      }
      if (run.status !== "running") {
        area.replaceChildren(runOutcome(run));
        if (done) done(run);
        return;
      }
      const p = run.progress;
      if (p) {
        bar.max = Math.max(p.planned, 1);
        bar.value = Math.min(p.done, bar.max);
        const rate = p.per_second ? `${number(Math.round(p.per_second))} members/s` : null;
        const left = p.seconds_left !== null && p.seconds_left !== undefined ? `${duration(p.seconds_left)} left` : null;
        const phase = p.phase && p.phase !== "sending" ? `${p.phase}${p.list ? ` ${p.list}` : ""}` : null;
        text.textContent = [`${number(p.done)} of ${number(p.planned)} members`, rate, left, phase]
          .filter(Boolean)
          .join(" · ");
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  function runOutcome(run) {
    const c = runCounts(run);
    const parts = [badge(run), ` Run #${run.id}: ${countsText(c)}`];
    if (c.notSent) parts.push(`, ${number(c.notSent)} not sent`);
    const box = el("div", { class: `outcome ${run.status}` }, el("p", {}, parts));
    if (run.error) box.append(el("p", { class: "run-error" }, run.error));
    return box;
  }

  // Runs an export on demand and follows it in `area`; `then` is called with the finished run.
  async function runNow(name, area, then, extra = {}) {
    notice("");
    let answer;
    try {
      answer = await api("POST", `/exports/${encodeURIComponent(name)}/runs`, extra);
    } catch (e) {
      fail(e);
      return;
    }
    if (answer.run_id) {
      await follow(answer.run_id, area, (run) => {
        if (run.stopped_by_guard) offerAnyway(name, area, then, run.stopped_by_guard);
        if (then) then(run);
      });
    } else {
      const states = {
        queued_after_current_run: "It runs again as soon as the run in progress ends.",
        waiting_for_a_free_slot: "It waits for another export's run to end, then starts.",
        queued_after_another_process: "Another process is running it; it runs again after that.",
        queued: "No service has taken it yet; it runs as soon as one does.",
      };
      area.replaceChildren(el("p", { class: "info" }, states[answer.state] || `Queued (${answer.state}).`));
    }
  }

  // After a guard stopped a run: what it would have done, and a button that lets the run through that guard.
  function offerAnyway(name, area, then, guard) {
    const button = el("button", { type: "button", class: "danger" }, "Run anyway");
    const adding = guard === "mass_addition";
    const why = adding
      ? "The run would have added an unusually large number of new members to a list (a subscribe can start a " +
        "journey, and a message cannot be unsent), so nothing was changed. If the segment really grew, run it anyway. "
      : "The run would have unsubscribed an unusually large share of a list, so nothing was changed. If the segment " +
        "really shrank, run it anyway. ";
    area.append(el("p", { class: "warning" }, why, button));
    const allow = adding ? { allow_mass_addition: true } : { allow_mass_removal: true };
    confirmTwice(button, adding ? "Yes, add them" : "Yes, unsubscribe them", () => runNow(name, area, then, allow));
  }

  // ---- verify: each list read back from Iterable ------------------------------------------------------------

  const driftWords = [
    ["missing", "missing"],
    ["not_yet_sent", "not yet sent"],
    ["lingering", "lingering"],
    ["others", "others'"],
    ["settling", "settling"],
  ];
  const verdictWords = { clean: "Clean", drifted: "Drifted", no_verdict: "No verdict" };

  // One list's verify in a line: "Drifted: 50 missing, 0 not yet sent, 10 lingering, 30 others', 0 settling".
  function driftLine(l) {
    const counts = driftWords.map(([k, words]) => `${number((l[k] || {}).count || 0)} ${words}`).join(", ");
    return `${verdictWords[l.verdict] || l.verdict}: ${counts}`;
  }

  function verifyOutcome(run) {
    const kind = run.kind === "verify_repair" ? "Verify and repair" : "Verify";
    const box = el("div", { class: `outcome ${run.status}` }, el("p", {}, badge(run), ` ${kind} #${run.id}`));
    for (const l of run.verify || []) {
      box.append(el("p", { class: "verify-line", "data-list": l.list_name }, `${l.list_name}: ${driftLine(l)}`));
      if (l.note) box.append(el("p", { class: "hint" }, l.note));
      const examples = driftWords.filter(([k]) => ((l[k] || {}).examples || []).length);
      if (examples.length) {
        const d = el("details", {}, el("summary", {}, "Examples"));
        for (const [k, words] of examples) d.append(el("p", {}, `${words}: ${l[k].examples.join(", ")}`));
        box.append(d);
      }
    }
    if (run.kind === "verify_repair") box.append(el("p", {}, `Repair: ${countsText(runCounts(run))}.`));
    if (run.error) box.append(el("p", { class: "run-error" }, run.error));
    return box;
  }

  // Verifies an export (or repairs it, with `extra`) and shows what each list held; offers Repair on drift.
  async function verifyNow(name, area, then, extra = {}) {
    notice("");
    let answer;
    try {
      answer = await api("POST", `/exports/${encodeURIComponent(name)}/verify`, extra);
    } catch (e) {
      fail(e);
      return;
    }
    if (!answer.run_id) {
      area.replaceChildren(el("p", { class: "info" }, "The verify waits for the run in progress, then starts."));
      return;
    }
    await follow(answer.run_id, area, async (ended) => {
      let run = ended;
      try {
        run = await api("GET", `/runs/${answer.run_id}`);
      } catch (e) {
        fail(e);
      }
      area.replaceChildren(verifyOutcome(run));
      const lists = run.verify || [];
      const missing = lists.some((l) => l.verdict === "drifted" && l.missing.count > 0);
      const lingering = lists.some((l) => l.verdict === "drifted" && l.lingering.count > 0);
      if (run.stopped_by_guard) {
        const adding = run.stopped_by_guard === "mass_addition";
        const anyway = el("button", { type: "button", class: "danger" }, "Repair anyway");
        const why = adding
          ? "The repair would have added an unusually large number of members to a list, so nothing was changed. "
          : "The repair would have unsubscribed an unusually large share of a list, so nothing was removed. ";
        area.append(el("p", { class: "warning" }, why, anyway));
        const allow = adding ? { allow_mass_addition: true } : { allow_mass_removal: true };
        confirmTwice(anyway, adding ? "Yes, add them" : "Yes, unsubscribe them", () => verifyNow(name, area, then, { ...extra, ...allow }));
      } else if (run.kind === "verify" && (missing || lingering)) {
        const repair = el("button", { type: "button", id: "repair" }, "Repair");
        const also = el("input", { type: "checkbox", name: "remove_lingering" });
        const p = el("p", {}, repair);
        if (lingering) p.append(" ", el("label", { class: "check" }, also, "Also remove the lingering members"));
        area.append(p);
        repair.addEventListener("click", () =>
          verifyNow(name, area, then, also.checked ? { repair: true, remove_lingering: true } : { repair: true }),
        );
      }
      if (then) then(run);
    });
  }

  async function preview(name, area) {
    area.replaceChildren(el("p", { class: "loading" }, "Working out what a run would change…"));
    let report;
    try {
      report = await api("POST", `/exports/${encodeURIComponent(name)}/runs`, { dry_run: true });
    } catch (e) {
      area.replaceChildren();
      fail(e);
      return;
    }
    const rows = (report.lists || []).map((l) =>
      el("tr", {}, el("td", {}, l.list_name), el("td", {}, number(l.members)), el("td", {}, number(l.to_add)), el("td", {}, number(l.to_remove)), el("td", {}, number(l.unchanged)), el("td", {}, number(l.invalid))),
    );
    const box = el("div", { class: "preview" }, el("h2", {}, "Preview: what a run would change"));
    if (report.stopped_by_guard === "mass_removal") {
      box.append(el("p", { class: "warning" }, "A run would stop here: the mass-removal guard would keep it from unsubscribing this many members."));
    } else if (report.stopped_by_guard === "mass_addition") {
      box.append(el("p", { class: "warning" }, "A run would stop here: the mass-addition guard would keep it from adding this many new members."));
    } else if (report.error) box.append(el("p", { class: "run-error" }, report.error));
    box.append(table(["List", "Members", "To add", "To remove", "Unchanged", "Invalid"], rows, "No list to change."));
    box.append(el("p", { class: "hint" }, "Nothing was sent: this is a preview."));
    area.replaceChildren(box);
  }

  // ---- pages -------------------------------------------------------------------------------------------------

  async function signIn() {
    const form = $("#sign-in");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $(".error", form).textContent = "";
      const d = formData(form);
      try {
        await api("POST", "/session", { user: d.user, password: new FormData(form).get("password") });
        location.href = form.dataset.next || "/exports";
      } catch (e) {
        fail(e.status === 401 ? new Failure(401, "The user name or password is wrong.") : e, form);
      }
    });
  }

  function exportRow(x) {
    const last = x.last_run;
    const c = runCounts(last);
    const lastCell = last
      ? el("td", {}, badge(last), el("br"), countsText(c), el("br"), el("small", {}, when(last.started_at)))
      : el("td", {}, "Never run");
    const area = el("div", { class: "run-area" });
    const run = el("button", { type: "button" }, "Run");
    const row = el(
      "tr",
      { "data-export": x.name },
      el("td", {}, el("a", { href: `/exports/${encodeURIComponent(x.name)}` }, x.name)),
      el("td", {}, x.connection || "– (no connection)"),
      el("td", {}, (x.lists || []).map((t) => t.segment).join(", ")),
      el("td", {}, x.schedule),
      el("td", {}, when(x.next_run)),
      lastCell,
      el("td", {}, run, area),
    );
    run.addEventListener("click", () => runNow(x.name, area, () => setTimeout(exportsPage, 1500)));
    if (x.running_run_id) follow(x.running_run_id, area, () => setTimeout(exportsPage, 1500));
    return row;
  }

  async function exportsPage() {
    const list = $("#exports-list");
    try {
      const exports = await api("GET", "/exports");
      list.replaceChildren(
        table(
          ["Export", "Connection", "Segments", "Schedule", "Next run", "Last run", ""],
          exports.map(exportRow),
          "No exports yet. Add a destination to send a segment to an Iterable list.",
        ),
      );
    } catch (e) {
      fail(e);
    }
  }

  async function newExportPage() {
    const form = $("#new-export");
    const select = $("#connection");
    let connections = [];
    try {
      connections = await api("GET", "/connections");
    } catch (e) {
      fail(e, form);
    }
    if (!connections.length) {
      $("#no-connection").hidden = false;
      form.querySelector("button[type=submit]").disabled = true;
    } else {
      select.append(el("optgroup", { label: "Iterable" }, connections.map((c) => el("option", { value: c.name }, c.name))));
    }
    const userId = $("#user-id-field");
    const matching = () => {
      const c = connections.find((x) => x.name === select.value);
      const type = c ? c.project_type : "email";
      userId.hidden = type === "email";
      $("input", userId).required = type === "userid";
      $("input", $("#email-field")).required = type !== "userid";
    };
    select.addEventListener("change", matching);
    matching();

    const holder = $("#segments");
    try {
      const segments = await api("GET", "/segments");
      holder.replaceChildren(
        segments.length
          ? el(
              "div",
              { class: "choices" },
              segments.map((s) => {
                const size = s.members ?? null;
                return el(
                  "label",
                  { class: "check" },
                  el("input", { type: "checkbox", name: "segments", value: s.name }),
                  s.name,
                  size !== null ? el("small", {}, ` ${number(size)} members`) : null,
                );
              }),
            )
          : el("p", { class: "empty" }, "No segments yet: an administrator defines them."),
      );
      // The columns of the chosen segments, read as they are chosen, offered for the email and user id (a column the
      // export uses must be in every segment it sends). Typing another name stays possible.
      const columnsOf = new Map();
      const offer = () => {
        const chosen = [...holder.querySelectorAll("input[name=segments]:checked")].map((i) => i.value);
        const each = chosen.map((n) => columnsOf.get(n) || []);
        const columns = each.length ? each[0].filter((c) => each.every((cols) => cols.includes(c))) : [];
        $("#columns").replaceChildren(...columns.map((c) => el("option", { value: c })));
        $("#columns-hint").textContent = !chosen.length
          ? "Choose the segments first: their columns are offered here."
          : columns.length
            ? `Columns of the chosen segments: ${columns.join(", ")}. Pick one from the list, or type a column name.`
            : "The chosen segments have no column in common; type the column name.";
        suggest($("input", $("#email-field")), columns, ["email", "email_address"]);
        if (!userId.hidden) suggest($("input", userId), columns, ["user_id", "userid"]);
      };
      // Fills in an obvious column (by name) while the field is empty or holds an earlier suggestion.
      const suggest = (input, columns, names) => {
        if (input.value && input.dataset.suggested !== "yes") return;
        const found = columns.find((c) => names.includes(c.toLowerCase()));
        input.value = found || "";
        input.dataset.suggested = found ? "yes" : "";
      };
      for (const input of form.querySelectorAll("input[list=columns]")) {
        input.addEventListener("input", () => (input.dataset.suggested = ""));
      }
      holder.addEventListener("change", async (ev) => {
        const name = ev.target.value;
        if (ev.target.checked && !columnsOf.has(name)) {
          try {
            const s = await api("GET", `/segments/${encodeURIComponent(name)}`);
            columnsOf.set(name, s.columns || []);
          } catch (e) {
            columnsOf.set(name, []);
          }
        }
        offer();
      });
    } catch (e) {
      fail(e, form);
    }

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $(".error", form).textContent = "";
      const d = formData(form);
      const segments = [...form.querySelectorAll("input[name=segments]:checked")].map((i) => i.value);
      if (!segments.length) {
        $(".error", form).textContent = "Choose at least one segment to export.";
        return;
      }
      const body = {
        name: d.name,
        connection: d.connection,
        segments,
        email_field: d.email_field,
        fields: (d.fields || "").split(",").map((f) => f.trim()).filter(Boolean),
        schedule: d.schedule || "refresh",
      };
      if (d.user_id_field && !userId.hidden) body.user_id_field = d.user_id_field;
      try {
        await api("POST", "/exports", body);
        location.href = `/exports/${encodeURIComponent(d.name)}`;
      } catch (e) {
        fail(e, form);
      }
    });
  }

  async function exportPage() {
    const name = subject;
    const path = `/exports/${encodeURIComponent(name)}`;
    const area = $("#run-area");
    let x;
    const load = async () => {
      try {
        x = await api("GET", path);
      } catch (e) {
        fail(e);
        return;
      }
      const details = [
        ["Connection", x.connection || "– (no connection: an administrator removed it)"],
        ["Segments", (x.lists || []).map((t) => t.segment).join(", ")],
        ["Email field", x.email_field || "–"],
        ["User ID field", x.user_id_field || "–"],
        ["Extra fields", (x.fields || []).map((f) => (f.column === f.iterable_field ? f.column : `${f.column} → ${f.iterable_field}`)).join(", ") || "none"],
        ["Schedule", x.schedule],
        ["Next run", when(x.next_run)],
        ["Created", when(x.created_at)],
      ];
      $("#export-details").replaceChildren(...details.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      const edit = $("#edit-export");
      edit.schedule.value = x.schedule;
      $("#current-fields").replaceChildren(
        ...(x.fields || []).map((f) =>
          el("label", { class: "check" }, el("input", { type: "checkbox", name: "remove_fields", value: f.column }), `Stop sending ${f.column}`),
        ),
      );
      $("#export-users").replaceChildren(
        ...(x.users || []).map((u) => {
          const remove = el("button", { type: "button", class: "link" }, "Remove");
          remove.addEventListener("click", async () => {
            try {
              await api("DELETE", `${path}/users/${encodeURIComponent(u)}`);
              load();
            } catch (e) {
              fail(e);
            }
          });
          return el("li", {}, u, " ", remove);
        }),
      );
      if (x.running_run_id && !area.querySelector(".progress")) follow(x.running_run_id, area, () => history());
      exportNotify(path, x, load);
    };
    const history = async () => {
      try {
        const runs = await api("GET", `/runs?export=${encodeURIComponent(name)}&limit=20`);
        const rows = runs.map((r) => {
          const c = runCounts(r);
          const more = el("button", { type: "button", class: "link" }, "Details");
          const detailRow = el("tr", { class: "run-details", hidden: true }, el("td", { colspan: 8 }));
          more.addEventListener("click", async () => {
            detailRow.hidden = !detailRow.hidden;
            if (!detailRow.hidden) detailRow.firstChild.replaceChildren(await runDetails(r.id));
          });
          return [
            el(
              "tr",
              { "data-run": r.id },
              el("td", {}, `#${r.id}`),
              el("td", {}, badge(r)),
              el("td", {}, when(r.started_at)),
              el("td", {}, triggerWords[r.trigger] || r.trigger, r.kind && r.kind !== "run" ? ` (${r.kind === "verify" ? "verify" : "verify and repair"})` : ""),
              el("td", {}, number(c.added)),
              el("td", {}, number(c.updated + c.alreadyOnList)),
              el("td", {}, number(c.removed)),
              el("td", {}, number(c.notSent), " ", more),
            ),
            detailRow,
          ];
        });
        $("#run-history").replaceChildren(
          table(["Run", "Status", "Started", "Started by", "Added", "Updated", "Removed", "Not sent"], rows.flat(), "No run yet."),
        );
        // The last verify's finding per list, under the buttons.
        const last = runs.find((r) => r.kind && r.kind !== "run" && r.status !== "running");
        const line = $("#last-verify");
        if (last) {
          const run = await api("GET", `/runs/${last.id}`);
          const lists = (run.verify || []).map((l) => `${l.list_name}: ${driftLine(l)}`).join("; ");
          line.textContent = `Last verify (#${run.id}, ${when(run.started_at)}): ${lists || run.error || "no list"}`;
          line.hidden = false;
        } else {
          line.hidden = true;
        }
      } catch (e) {
        fail(e);
      }
    };
    $("#run").addEventListener("click", () => runNow(name, area, () => { history(); load(); }));
    $("#preview").addEventListener("click", () => preview(name, area));
    $("#verify").addEventListener("click", () => verifyNow(name, area, () => { history(); load(); }));
    const remove = async (cancelRun) => {
      try {
        await api("DELETE", cancelRun ? `${path}?cancel_run=true` : path);
        location.href = "/exports";
      } catch (e) {
        if (cancelRun) fail(e);
        else offerToStopRun(e, null, "Stop the run and remove", () => remove(true));
      }
    };
    confirmTwice($("#remove-export"), "Yes, remove it", () => remove(false));
    $("#edit-export").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      $(".error", form).textContent = "";
      const d = formData(form);
      const change = {
        add_fields: (d.add_fields || "").split(",").map((f) => f.trim()).filter(Boolean),
        remove_fields: [...form.querySelectorAll("input[name=remove_fields]:checked")].map((i) => i.value),
      };
      if (d.schedule && d.schedule !== x.schedule) change.schedule = d.schedule;
      const save = async (cancelRun) => {
        try {
          await api("PATCH", path, cancelRun ? { ...change, cancel_run: true } : change);
          form.add_fields.value = "";
          $(".error", form).textContent = "";
          notice("Saved. The next run uses the new settings.");
          load();
        } catch (e) {
          if (cancelRun) fail(e, form);
          else offerToStopRun(e, form, "Stop the run and save", () => save(true));
        }
      };
      await save(false);
    });
    $("#add-export-notify").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      $(".error", form).textContent = "";
      const events = [...form.querySelectorAll("input[name=events]:checked")].map((i) => i.value);
      try {
        await api("PATCH", path, { notify: [`${form.channel.value}:${events.join(",")}`] });
        notice(`${form.channel.value} is told about this export.`);
        load();
      } catch (e) {
        fail(e, form);
      }
    });
    $("#add-export-user").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("POST", `${path}/users`, { user: formData(ev.target).user });
        ev.target.reset();
        load();
      } catch (e) {
        fail(e);
      }
    });
    await load();
    await history();
  }

  async function runDetails(id) {
    let run;
    try {
      run = await api("GET", `/runs/${id}`);
    } catch (e) {
      return el("p", { class: "error" }, e.message);
    }
    const box = el("div", {});
    if (run.error) box.append(el("p", { class: "run-error" }, run.error));
    for (const t of run.lists || []) {
      box.append(
        el(
          "p",
          {},
          `${t.list_name}: ${number(t.source_rows)} rows read, ${number(t.added)} added (new on the list), ` +
            `${number(t.updated)} updated, ${number(t.already_on_list)} already on the list when it was adopted, ` +
            `${number(t.removed)} removed, ${number(t.unchanged)} unchanged, ${number(t.invalid)} invalid, ` +
            `${number(t.rejected)} rejected by Iterable.`,
        ),
      );
    }
    const issues = run.rejected_and_invalid || [];
    if (issues.length) {
      box.append(el("h3", {}, "Members that were not sent, and why"));
      box.append(
        table(["Member", "Not sent because"], issues.map((i) => el("tr", {}, el("td", {}, memberText(i.member)), el("td", {}, i.reason || i.kind))), ""),
      );
    }
    return box;
  }

  async function connectionsPage() {
    const list = $("#connections-list");
    try {
      const cs = await api("GET", "/connections");
      const who = { admins: "Administrators", contributors: "Administrators and contributors" };
      list.replaceChildren(
        table(
          ["Connection", "Region", "Project type", "Who can use it", "Export user", "Key last checked"],
          cs.map((c) =>
            el(
              "tr",
              { "data-connection": c.name },
              el("td", {}, el("a", { href: `/connections/${encodeURIComponent(c.name)}` }, c.name)),
              el("td", {}, c.region ? c.region.toUpperCase() : "own base URL"),
              el("td", {}, c.project_type || "–"),
              el("td", {}, who[c.usable_by] || c.usable_by),
              el("td", {}, c.export_user || "– (none: scheduled runs wait for one)"),
              el("td", {}, when(c.verified_at)),
            ),
          ),
          "No connections yet. Add one to send segments to Iterable.",
        ),
      );
    } catch (e) {
      fail(e);
    }
  }

  function newConnectionPage() {
    const form = $("#new-connection");
    $("#choose-iterable").addEventListener("click", () => {
      $("#destinations").hidden = true;
      form.hidden = false;
      form.name.focus();
    });
    const save = $("#save-connection");
    const result = $("#connect-result");
    let checked = false;
    const update = () => {
      save.disabled = !(checked && form.accept_data_privacy.checked);
    };
    for (const f of ["api_key", "base_url", "region"]) {
      form[f].addEventListener("input", () => {
        checked = false;
        result.textContent = "";
        update();
      });
    }
    form.accept_data_privacy.addEventListener("change", update);
    const target = () => {
      const d = formData(form);
      const t = { api_key: new FormData(form).get("api_key"), region: d.region };
      if (d.base_url) t.base_url = d.base_url;
      return t;
    };
    $("#connect").addEventListener("click", async () => {
      $(".error", form).textContent = "";
      result.className = "";
      result.textContent = "Asking Iterable…";
      try {
        const r = await api("POST", "/connections/check", target());
        checked = r.ok;
        if (r.ok) {
          result.className = "ok";
          const n = Array.isArray(r.lists) ? r.lists.length : r.lists;
          result.textContent =
            `Connected: Iterable let this key read the project's lists${n !== undefined ? ` (${number(n)} of them)` : ""}. ` +
            "Whether it may also write them shows at the first run: a read-only key is refused there, saying so.";
        } else {
          result.className = "error";
          result.textContent = r.bad_key
            ? `Iterable refused the key: ${r.error}. Check that you copied a server-side key of this project.`
            : `Iterable could not be asked: ${r.error}`;
        }
      } catch (e) {
        checked = false;
        result.className = "error";
        result.textContent = e.message;
      }
      update();
    });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      $(".error", form).textContent = "";
      const d = formData(form);
      const body = Object.assign(target(), {
        name: d.name,
        usable_by: d.usable_by,
        project_type: d.project_type,
        accept_data_privacy: form.accept_data_privacy.checked,
        add_me_as_export_user: form.add_me_as_export_user.checked,
      });
      try {
        await api("POST", "/connections", body);
        location.href = `/connections/${encodeURIComponent(d.name)}`;
      } catch (e) {
        fail(e, form);
      }
    });
  }

  // Where a connection's key comes from, as `connection show` says it: only a stored key is never shown again.
  function keyWords(c) {
    const end = c.api_key_last4 ? ` (ends in …${c.api_key_last4})` : "";
    switch (c.api_key_source) {
      case "stored":
        return `stored encrypted${end}; never shown again`;
      case "env":
        return `read at each use from the service's ${c.api_key}`;
      case "file":
        return `read at each use from the ${c.api_key}`;
      default:
        return c.api_key || "–";
    }
  }

  async function connectionPage() {
    const path = `/connections/${encodeURIComponent(subject)}`;
    const who = { admins: "Administrators", contributors: "Administrators and contributors" };
    const load = async () => {
      try {
        const c = await api("GET", path);
        const details = [
          ["Destination", "Iterable"],
          ["Region", c.region ? c.region.toUpperCase() : "– (its own base URL)"],
          ["Project type", c.project_type || "–"],
          ["Base URL", c.base_url],
          ["Who can use it", who[c.usable_by] || c.usable_by],
          ["Export user", c.export_user || "– (none: scheduled runs wait for an administrator to become it)"],
          ["Key", keyWords(c)],
          ["Key last checked", when(c.verified_at)],
          ["Data privacy terms", c.privacy_accepted_by ? `agreed by ${c.privacy_accepted_by}, ${when(c.privacy_accepted_at)}` : "–"],
        ];
        if (c.export_user_problem) details.push(["Scheduled runs", c.export_user_problem]);
        $("#connection-details").replaceChildren(...details.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
        $("#usable-by").usable_by.value = c.usable_by;
      } catch (e) {
        fail(e);
      }
    };
    const change = async (body, done) => {
      notice("");
      try {
        await api("PATCH", path, body);
        notice(done);
        load();
      } catch (e) {
        fail(e);
      }
    };
    $("#usable-by").addEventListener("submit", (ev) => {
      ev.preventDefault();
      change({ usable_by: ev.target.usable_by.value }, "Saved who can use this connection.");
    });
    $("#rotate-key").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const key = new FormData(ev.target).get("api_key");
      await change({ api_key: key }, "Iterable accepted the new key; it replaces the old one.");
      ev.target.reset();
    });
    $("#become-export-user").addEventListener("click", async () => {
      try {
        await api("POST", `${path}/export-user`);
        notice("You are now this connection's export user.");
        load();
      } catch (e) {
        fail(e);
      }
    });
    const dialog = $("#remove-dialog");
    $("#remove-connection").addEventListener("click", () => dialog.showModal());
    dialog.addEventListener("close", async () => {
      if (dialog.returnValue !== "remove") return;
      const exports = $("input[name=exports]:checked", dialog).value;
      try {
        await api("DELETE", `${path}?exports=${exports}`);
        location.href = "/connections";
      } catch (e) {
        fail(e);
      }
    });
    await load();
  }

  function showToken(holder, user, token) {
    holder.replaceChildren(
      el(
        "div",
        { class: "token" },
        el("p", {}, `The API token of ${user}, shown this once. Copy it now:`),
        el("code", {}, token),
      ),
    );
  }

  async function usersPage() {
    const list = $("#users-list");
    const load = async () => {
      try {
        const users = await api("GET", "/users");
        list.replaceChildren(
          table(
            ["User", "Role", "Password", "Added", ""],
            users.map((u) => {
              const role = el("select", { "aria-label": `Role of ${u.name}` }, el("option", { value: "contributor" }, "Contributor"), el("option", { value: "admin" }, "Administrator"));
              role.value = u.role;
              role.addEventListener("change", async () => {
                try {
                  await api("PATCH", `/users/${encodeURIComponent(u.name)}`, { role: role.value });
                  notice(`${u.name} is now ${role.value === "admin" ? "an administrator" : "a contributor"}.`);
                } catch (e) {
                  fail(e);
                  role.value = u.role;
                }
              });
              const password = el("input", { type: "password", placeholder: "new password", "aria-label": `New password for ${u.name}`, autocomplete: "new-password" });
              const setPassword = el("button", { type: "button" }, "Reset password");
              setPassword.addEventListener("click", async () => {
                try {
                  await api("POST", `/users/${encodeURIComponent(u.name)}/password`, { password: password.value });
                  password.value = "";
                  notice(`Set the password of ${u.name}.`);
                  load();
                } catch (e) {
                  fail(e);
                }
              });
              const rotate = el("button", { type: "button" }, "Rotate token");
              confirmTwice(rotate, "Yes, the old one stops", async () => {
                try {
                  const r = await api("POST", `/users/${encodeURIComponent(u.name)}/token`);
                  showToken($("#new-token"), u.name, r.token);
                } catch (e) {
                  fail(e);
                }
              });
              const signOut = el("button", { type: "button" }, "Sign out everywhere");
              confirmTwice(signOut, "Yes, sign out", async () => {
                try {
                  const r = await api("DELETE", `/users/${encodeURIComponent(u.name)}/sessions`);
                  notice(`Ended ${r.ended} session${r.ended === 1 ? "" : "s"} of ${u.name}; their browsers must sign in again. Their API token still works.`);
                } catch (e) {
                  fail(e);
                }
              });
              const remove = el("button", { type: "button", class: "danger" }, "Remove");
              confirmTwice(remove, "Yes, remove", async () => {
                try {
                  await api("DELETE", `/users/${encodeURIComponent(u.name)}`);
                  load();
                } catch (e) {
                  fail(e);
                }
              });
              return el(
                "tr",
                { "data-user": u.name },
                el("td", {}, u.name),
                el("td", {}, role),
                el("td", {}, u.has_password ? "set" : "not set"),
                el("td", {}, when(u.created_at)),
                el("td", { class: "actions" }, password, setPassword, rotate, signOut, remove),
              );
            }),
            "No accounts.",
          ),
        );
      } catch (e) {
        fail(e);
      }
    };
    $("#add-user").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      $(".error", form).textContent = "";
      const d = formData(form);
      try {
        const r = await api("POST", "/users", { name: d.name, role: d.role });
        showToken($("#new-token"), d.name, r.token);
        form.reset();
        load();
      } catch (e) {
        fail(e, form);
      }
    });
    await load();
  }

  const eventNames = ["failed", "guard", "recovered", "rejected", "key", "list", "drift"];
  const defaultEvents = ["failed", "guard", "recovered", "key"];
  const eventWords = {
    failed: "a run fails",
    guard: "a guard stops a run",
    recovered: "it recovers",
    rejected: "many members are rejected",
    key: "Iterable refuses the key",
    list: "a list was recreated",
    drift: "a list differs from its segment",
  };

  async function notificationsPage() {
    const list = $("#channels-list");
    const deliveries = async (name) => {
      try {
        const log = await api("GET", `/channels/${encodeURIComponent(name)}/deliveries`);
        $("#deliveries").replaceChildren(
          el("h3", {}, `Channel ${name}`),
          table(
            ["Time", "Event", "Export", "Run", "State", "Attempts", "Last answer"],
            log.map((d) =>
              el(
                "tr",
                { "data-event": d.event_id },
                el("td", {}, when(d.created_at)),
                el("td", {}, d.event),
                el("td", {}, d.export || "–"),
                el("td", {}, d.run_id ? `#${d.run_id}` : "–"),
                el("td", {}, d.state === "pending" ? `pending (next ${when(d.next_attempt_at)})` : d.state.replace("_", " ")),
                el("td", {}, number(d.attempts)),
                el("td", {}, d.last_answer || "–"),
              ),
            ),
            "Nothing sent yet.",
          ),
        );
      } catch (e) {
        fail(e);
      }
    };
    const load = async () => {
      try {
        const channels = await api("GET", "/channels");
        list.replaceChildren(
          table(
            ["Channel", "Kind", "Sends to", "Usable by", "Exports", ""],
            channels.map((c) => {
              const test = el("button", { type: "button" }, "Send a test");
              test.addEventListener("click", async () => {
                try {
                  const r = await api("POST", `/channels/${encodeURIComponent(c.name)}/test`);
                  if (r.delivered) notice(`Sent a test message to ${c.name}: the receiver answered ${r.answer}.`);
                  else notice(`The test message to ${c.name} was not delivered: ${r.answer}.`, "error");
                } catch (e) {
                  fail(e);
                }
              });
              const log = el("button", { type: "button" }, "Deliveries");
              log.addEventListener("click", () => deliveries(c.name));
              const remove = el("button", { type: "button", class: "danger" }, "Remove");
              confirmTwice(remove, "Yes, remove", async () => {
                try {
                  await api("DELETE", `/channels/${encodeURIComponent(c.name)}`);
                  load();
                } catch (e) {
                  fail(e);
                }
              });
              return el(
                "tr",
                { "data-channel": c.name },
                el("td", {}, c.name),
                el("td", {}, c.kind),
                el("td", {}, c.addresses ? c.addresses.join(", ") : "(URL kept sealed)"),
                el("td", {}, c.usable_by === "contributors" ? "contributors too" : "administrators"),
                el("td", {}, (c.exports || []).join(", ") || "–"),
                el("td", { class: "actions" }, test, log, remove),
              );
            }),
            "No channels yet.",
          ),
        );
      } catch (e) {
        fail(e);
      }
    };
    $("#add-channel").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      $(".error", form).textContent = "";
      const d = formData(form);
      const body = { name: d.name, usable_by: d.usable_by };
      if (d.kind === "email") body.email = d.target.split(",").map((a) => a.trim()).filter(Boolean);
      else body[d.kind] = d.target.trim();
      try {
        const r = await api("POST", "/channels", body);
        const holder = $("#new-secret");
        holder.replaceChildren();
        if (r.signing_secret) {
          holder.replaceChildren(
            el("p", { class: "note" }, `Signing secret of ${d.name}, shown once: give it to the receiver to check the Segment-Exporter-Signature header.`),
            el("code", { class: "token" }, r.signing_secret),
          );
        }
        form.reset();
        notice(`Added channel ${d.name}. Send it a test, then subscribe exports on their pages.`);
        load();
      } catch (e) {
        fail(e, form);
      }
    });
    await load();
  }

  // An export's subscriptions, on its page: listed with a way to stop each, and a form to add one.
  async function exportNotify(path, x, reload) {
    const holder = $("#export-notify");
    if (!holder) return;
    holder.replaceChildren(
      table(
        ["Channel", "Told when", ""],
        (x.notify || []).map((s) => {
          const stop = el("button", { type: "button", class: "link" }, "Stop");
          stop.addEventListener("click", async () => {
            try {
              await api("PATCH", path, { no_notify: [s.channel] });
              reload();
            } catch (e) {
              fail(e);
            }
          });
          return el("tr", { "data-channel": s.channel }, el("td", {}, s.channel), el("td", {}, s.events.map((e) => eventWords[e] || e).join(", ")), el("td", {}, stop));
        }),
        "No channel is told about this export.",
      ),
    );
    const select = $("#notify-channel");
    try {
      const channels = await api("GET", "/channels");
      select.replaceChildren(...channels.map((c) => el("option", { value: c.name }, c.name)));
      $("#add-export-notify").hidden = channels.length === 0;
    } catch (e) {
      fail(e);
    }
    const events = $("#notify-events");
    if (!events.childElementCount) {
      events.replaceChildren(
        ...eventNames.map((e) => {
          const box = el("input", { type: "checkbox", name: "events", value: e });
          box.checked = defaultEvents.includes(e);
          return el("label", { class: "check" }, box, ` When ${eventWords[e]}`);
        }),
      );
    }
  }

  // An audit row's detail, with how many times it happened when it counts several (failed sign-ins).
  const detail = (r) => (r.count > 1 ? `${r.detail || ""} (${r.count} times)`.trim() : r.detail || "");

  async function auditPage() {
    const list = $("#audit-list");
    const form = $("#audit-filter");
    const load = async () => {
      const user = formData(form).user;
      const q = user ? `?limit=200&user=${encodeURIComponent(user)}` : "?limit=200";
      try {
        const rows = await api("GET", `/audit${q}`);
        list.replaceChildren(
          table(
            ["When", "Who", "From", "What", "On", "Detail"],
            rows.map((r) => el("tr", {}, el("td", {}, when(r.at)), el("td", {}, r.actor), el("td", {}, r.origin), el("td", {}, r.action), el("td", {}, r.target || ""), el("td", {}, detail(r)))),
            "Nothing recorded yet.",
          ),
        );
      } catch (e) {
        fail(e);
      }
    };
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      load();
    });
    await load();
  }

  async function accountPage() {
    const me = $("#who-name").textContent;
    const path = `/users/${encodeURIComponent(me)}/sessions`;
    const list = $("#sessions-list");
    const load = async () => {
      try {
        const sessions = await api("GET", path);
        list.replaceChildren(
          table(
            ["Signed in", "Last used", "Ends", "From", ""],
            sessions.map((x) => {
              let action = el("span", { class: "hint" }, "This browser");
              if (!x.current) {
                action = el("button", { type: "button" }, "End");
                confirmTwice(action, "Yes, end it", async () => {
                  try {
                    await api("DELETE", `${path}/${x.id}`);
                    notice("That session has ended; its browser must sign in again.");
                    load();
                  } catch (e) {
                    fail(e);
                  }
                });
              }
              return el(
                "tr",
                { "data-session": x.id },
                el("td", {}, when(x.signed_in_at)),
                el("td", {}, when(x.last_seen_at)),
                el("td", {}, when(x.expires_at)),
                el("td", {}, x.origin.replace(/^api /, "")),
                el("td", { class: "actions" }, action),
              );
            }),
            "No sessions.",
          ),
        );
      } catch (e) {
        fail(e);
      }
    };
    confirmTwice($("#sign-out-everywhere"), "Yes, everywhere", async () => {
      try {
        await api("DELETE", path);
      } catch (e) {
        return fail(e);
      }
      location.href = "/sign-in";
    });
    await load();
  }

  const signOut = $("#sign-out");
  if (signOut) {
    signOut.addEventListener("click", async () => {
      try {
        await api("DELETE", "/session");
      } catch (e) {
        // Signed out already, or the service is gone: the sign-in page is the right place either way.
      }
      location.href = "/sign-in";
    });
  }

  const pages = {
    "sign-in": signIn,
    exports: exportsPage,
    "new-export": newExportPage,
    export: exportPage,
    connections: connectionsPage,
    "new-connection": newConnectionPage,
    connection: connectionPage,
    users: usersPage,
    notifications: notificationsPage,
    audit: auditPage,
    account: accountPage,
  };
  if (pages[page]) pages[page]();
})();
