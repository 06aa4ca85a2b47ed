// The reference customer panel: plain JS over the panel API, no build step.
// Everything shown comes from the API and is put in the page as text (never innerHTML); mail HTML,
// already sanitised by the server, is shown only inside sandboxed frames.
"use strict";

(() => {
  const TOKEN_KEY = "panelToken";
  const LIMIT = Number(document.body.dataset.maxAttachmentBytes) || 15 * 1024 * 1024;
  const KINDS = { representative: "Przedstawiciel", technical: "Kontakt techniczny", billing: "Kontakt ds. płatności" };
  const FIELD_NAMES = { category: "kategoria", service: "usługa", subject: "temat", body: "treść", sender: "nadawca" };
  const state = { me: null, page: 1, perPage: 25, total: 0, open: new Set() };
  const $ = (selector, root = document) => root.querySelector(selector);

  // --- small helpers ---------------------------------------------------------------------------

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    const mib = bytes / (1024 * 1024);
    if (mib >= 1) return `${mib.toLocaleString("pl-PL", { maximumFractionDigits: 1 })} MB`;
    return `${Math.max(1, Math.round(bytes / 1024)).toLocaleString("pl-PL")} kB`;
  }

  function formatDate(iso) {
    return new Date(iso).toLocaleString("pl-PL", { dateStyle: "short", timeStyle: "short" });
  }

  function show(node, text) {
    node.textContent = text || "";
    node.hidden = !text;
  }

  function notice(text) {
    show($("#notice"), text);
  }

  // --- the API -----------------------------------------------------------------------------------

  class Unauthorised extends Error {}

  async function api(path, options = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { ...(options.headers || {}), Authorization: `Bearer ${token}` };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) throw new Unauthorised();
    const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    return { status: response.status, ok: response.ok, body };
  }

  function problemText(result) {
    const detail = result.body && result.body.detail;
    if (result.status === 422 && Array.isArray(detail)) {
      const missing = detail.filter((d) => d.type === "missing").map((d) => FIELD_NAMES[d.loc.at(-1)] || d.loc.at(-1));
      if (missing.length) return `Uzupełnij wymagane pola: ${missing.join(", ")}.`;
      return detail.map((d) => `${FIELD_NAMES[d.loc.at(-1)] || d.loc.at(-1)}: ${d.msg}`).join("; ");
    }
    if (result.status === 413 && result.body && result.body.filename !== undefined) {
      return `Plik „${result.body.filename}” przekracza limit ${formatSize(result.body.limit)} na załącznik. Nic nie zostało wysłane.`;
    }
    if (result.status === 404) return "Nie znaleziono (brak dostępu albo sprawa nie istnieje).";
    return `Nie udało się (${result.status}): ${typeof detail === "string" ? detail : "spróbuj ponownie"}.`;
  }

  function handleFailure(error) {
    if (error instanceof Unauthorised) {
      logout("Sesja wygasła albo token jest nieprawidłowy. Zaloguj się ponownie.");
      return;
    }
    notice(`Błąd połączenia: ${error.message}`);
  }

  // --- attachments: drag-and-drop or picker, sizes checked before anything is sent ---------------

  function attachmentField(form) {
    const files = [];
    const zone = $("[data-dropzone]", form);
    const list = $("[data-file-list]", form);
    const error = $("[data-file-error]", form);
    $("[data-limit]", form).textContent = formatSize(LIMIT);

    function render() {
      list.replaceChildren(...files.map((file, index) => el("li", {},
        `${file.name} (${formatSize(file.size)}) `,
        el("button", { type: "button", className: "link", "aria-label": `Usuń ${file.name}`,
          onclick: () => { files.splice(index, 1); render(); } }, "usuń"))));
    }

    function add(fileList) {
      const refused = [];
      for (const file of fileList) {
        if (file.size > LIMIT) refused.push(file);
        else files.push(file);
      }
      show(error, refused.map((file) =>
        `Plik „${file.name}” ma ${formatSize(file.size)} i przekracza limit ${formatSize(LIMIT)} na załącznik – nie został dodany.`
      ).join(" "));
      render();
    }

    const picker = $("[data-file-picker]", form);
    picker.addEventListener("change", () => { add(picker.files); picker.value = ""; });
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      add(event.dataTransfer.files);
    });
    return {
      files,
      clear() { files.length = 0; show(error, ""); render(); },
    };
  }

  // --- the new-message form ----------------------------------------------------------------------

  function fillSelect(select, options, keep) {
    select.replaceChildren(...keep, ...options.map(([value, label]) => el("option", { value }, label)));
  }

  function setUpNewMessage() {
    const form = $("#new-message");
    const toggle = $("#new-message-toggle");
    const attachments = attachmentField(form);
    const me = state.me;
    fillSelect(form.elements.category, me.categories.map((c) => [c.id, c.name]), [el("option", { value: "" }, "— wybierz —")]);
    fillSelect(form.elements.service, me.services.map((s) => [s.id, s.name || s.id]),
      me.services.length === 1 ? [] : [el("option", { value: "" }, "— wybierz —")]);
    const kinds = [...new Set(me.contacts.map((c) => c.kind))].filter((kind) => KINDS[kind]);
    fillSelect(form.elements.sender, kinds.map((kind) => {
      const contact = me.contacts.find((c) => c.kind === kind);
      return [kind, `${KINDS[kind]}: ${contact.name || contact.email}`];
    }), [el("option", { value: "" }, `Ja (${me.login})`)]);

    const setOpen = (open) => {
      form.hidden = !open;
      toggle.setAttribute("aria-expanded", String(open));
      if (open) form.elements.subject.focus();
    };
    toggle.addEventListener("click", () => setOpen(form.hidden));
    $("[data-cancel]", form).addEventListener("click", () => setOpen(false));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = $("[data-form-error]", form);
      const missing = ["category", "service", "subject", "body"].filter((name) => !form.elements[name].value.trim());
      if (missing.length) return show(error, `Uzupełnij wymagane pola: ${missing.map((n) => FIELD_NAMES[n]).join(", ")}.`);
      const data = new FormData();
      for (const name of ["category", "service", "subject", "body", "sender"]) {
        if (form.elements[name].value) data.append(name, form.elements[name].value);
      }
      for (const file of attachments.files) data.append("files", file, file.name);
      await submit(form, "/api/panel/messages", data, (result) => {
        form.reset();
        attachments.clear();
        setOpen(false);
        notice(`Wiadomość wysłana. Numer sprawy: ${result.body.number || "nadawany…"}`);
        state.page = 1;
        return loadCases();
      });
    });
  }

  async function submit(form, path, data, onDone) {
    const error = $("[data-form-error]", form);
    const button = $("button[type=submit]", form);
    show(error, "");
    button.disabled = true;
    try {
      const result = await api(path, { method: "POST", body: data });
      if (result.ok) await onDone(result);
      else show(error, problemText(result));
    } catch (failure) {
      handleFailure(failure);
    } finally {
      button.disabled = false;
    }
  }

  // --- the correspondence list --------------------------------------------------------------------

  function categoryName(id) {
    return state.me.categories.find((c) => c.id === id)?.name || id || "—";
  }

  function serviceName(id) {
    return state.me.services.find((s) => s.id === id)?.name || id || "—";
  }

  function answeredCell(item) {
    if (item.answered) return el("span", { className: "answered", title: "Biuro odpowiedziało" }, "✔ Odpowiedziano");
    if (item.status === "closed") return el("span", { className: "closed" }, "Zamknięta");
    return el("span", { className: "waiting" }, "Oczekuje");
  }

  function unreadCell(count) {
    return el("span", { className: count ? "unread badge" : "unread none", "data-unread": count,
      "aria-label": `Nieprzeczytane: ${count}` }, String(count));
  }

  function caseRow(item) {
    const button = el("button", { type: "button", className: "expand", "aria-expanded": "false",
      "aria-label": `Rozwiń sprawę ${item.number}` }, "+");
    const row = el("tr", { className: item.unread ? "case has-unread" : "case", "data-number": item.number },
      el("td", {}, button),
      el("td", { className: "number" }, item.number),
      el("td", { className: "subject" }, item.subject),
      el("td", {}, item.sender_name || item.sender),
      el("td", {}, categoryName(item.category)),
      el("td", {}, serviceName(item.service)),
      el("td", {}, el("time", { datetime: item.updated_at }, formatDate(item.updated_at))),
      el("td", { className: "answered-cell" }, answeredCell(item)),
      el("td", { className: "unread-cell" }, unreadCell(item.unread)));
    button.addEventListener("click", () => toggleThread(row, item.number));
    return row;
  }

  async function loadCases() {
    try {
      const result = await api(`/api/panel/cases?page=${state.page}&per_page=${state.perPage}`);
      if (!result.ok) return notice(problemText(result));
      state.total = result.body.total;
      const body = $("#cases tbody");
      body.replaceChildren(...result.body.items.map(caseRow));
      $("#empty").hidden = result.body.items.length > 0;
      const pages = Math.max(1, Math.ceil(state.total / state.perPage));
      $("#page-info").textContent = `Strona ${state.page} z ${pages} (spraw: ${state.total})`;
      $("#prev").disabled = state.page <= 1;
      $("#next").disabled = state.page >= pages;
      for (const number of state.open) {
        const row = body.querySelector(`tr[data-number="${CSS.escape(number)}"]`);
        if (row) await toggleThread(row, number);
        else state.open.delete(number);
      }
    } catch (failure) {
      handleFailure(failure);
    }
  }

  // --- one case's thread ---------------------------------------------------------------------------

  function htmlFrame(html) {
    const frame = el("iframe", { className: "mail-html", title: "Treść wiadomości (HTML)",
      sandbox: "allow-same-origin allow-popups allow-popups-to-escape-sandbox", referrerpolicy: "no-referrer" });
    frame.srcdoc = "<!doctype html><meta charset=utf-8><base target=_blank>" +
      "<style>body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2733}img{max-width:100%}</style>" + html;
    frame.addEventListener("load", () => {
      frame.style.height = `${frame.contentDocument.documentElement.scrollHeight + 4}px`;
    });
    return frame;
  }

  function messageBody(message) {
    const text = el("pre", { className: "mail-text" }, message.text);
    if (!message.html) return el("div", { className: "body" }, text);
    const frame = htmlFrame(message.html);
    text.hidden = true;
    const toggle = el("button", { type: "button", className: "link" }, "Pokaż tekst");
    toggle.addEventListener("click", () => {
      text.hidden = !text.hidden;
      frame.hidden = !text.hidden;
      toggle.textContent = text.hidden ? "Pokaż tekst" : "Pokaż HTML";
    });
    return el("div", { className: "body" }, frame, text, toggle);
  }

  function attachmentList(attachments) {
    const visible = attachments.filter((a) => !a.inline || a.refused);
    if (!visible.length) return null;
    return el("ul", { className: "attachments" }, visible.map((a) => el("li", {},
      a.download_url
        ? el("a", { href: a.download_url, download: a.filename }, a.filename)
        : el("span", { className: "refused" }, `${a.filename} – odrzucony`),
      ` (${formatSize(a.size)})`)));
  }

  function messageArticle(message) {
    const ours = message.direction === "outbound";
    const label = !ours ? "Wiadomość klienta" : message.auto_generated ? "Wiadomość automatyczna" : "Odpowiedź Biura Obsługi";
    // Only a personal answer counts as unread, as in the list (the automatic acknowledgement does not).
    const unread = message.read === false && !message.auto_generated;
    return el("article", { className: `message ${ours ? "outbound" : "inbound"}${unread ? " unread" : ""}` },
      el("header", {},
        el("strong", {}, label), " · ", message.from, " · ",
        el("time", { datetime: message.date }, formatDate(message.date)),
        el("div", { className: "subject" }, message.subject)),
      messageBody(message),
      attachmentList(message.attachments));
  }

  function threadCell(row, thread) {
    const markRead = el("button", { type: "button", className: "secondary mark-read",
      disabled: thread.unread === 0 }, "Oznacz jako przeczytane");
    markRead.addEventListener("click", () => markAsRead(row, thread.number, markRead));
    const reply = $("#reply-template").content.firstElementChild.cloneNode(true);
    const attachments = attachmentField(reply);
    reply.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!reply.elements.body.value.trim()) return show($("[data-form-error]", reply), "Uzupełnij wymagane pola: treść.");
      const data = new FormData();
      data.append("body", reply.elements.body.value);
      for (const file of attachments.files) data.append("files", file, file.name);
      await submit(reply, `/api/panel/cases/${encodeURIComponent(thread.number)}/replies`, data, () => {
        notice(`Odpowiedź w sprawie ${thread.number} wysłana.`);
        return loadCases();
      });
    });
    return el("td", { colspan: 9 },
      el("div", { className: "thread", "aria-label": `Sprawa ${thread.number}` },
        thread.messages.map(messageArticle),
        el("div", { className: "actions" }, markRead),
        reply));
  }

  async function toggleThread(row, number) {
    const button = $(".expand", row);
    const next = row.nextElementSibling;
    if (next && next.classList.contains("thread-row")) {
      next.remove();
      state.open.delete(number);
      button.textContent = "+";
      button.setAttribute("aria-expanded", "false");
      return;
    }
    try {
      const result = await api(`/api/panel/cases/${encodeURIComponent(number)}`);
      if (!result.ok) return notice(problemText(result));
      row.after(el("tr", { className: "thread-row", "data-thread": number }, threadCell(row, result.body)));
      state.open.add(number);
      button.textContent = "−";
      button.setAttribute("aria-expanded", "true");
      button.setAttribute("aria-label", `Zwiń sprawę ${number}`);
    } catch (failure) {
      handleFailure(failure);
    }
  }

  async function markAsRead(row, number, button) {
    try {
      const result = await api(`/api/panel/cases/${encodeURIComponent(number)}/read`, { method: "POST" });
      if (!result.ok) return notice(problemText(result));
      $(".unread-cell", row).replaceChildren(unreadCell(0));
      row.classList.remove("has-unread");
      button.disabled = true;
      for (const article of row.nextElementSibling.querySelectorAll("article.unread")) article.classList.remove("unread");
    } catch (failure) {
      handleFailure(failure);
    }
  }

  // --- logging in and out --------------------------------------------------------------------------

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    // A fresh page is the simplest way to drop every listener and all state of the old login.
    history.replaceState(null, "", message ? `/panel#${encodeURIComponent(message)}` : "/panel");
    location.reload();
  }

  function showLogin(message) {
    $("#app").hidden = true;
    $("#who").hidden = true;
    $("#login").hidden = false;
    show($("#login-error"), message);
    $("#login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
      start();
    }, { once: true });
  }

  async function start() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin("");
    try {
      const result = await api("/api/panel/me");
      if (!result.ok) throw new Error(problemText(result));
      state.me = result.body;
    } catch (failure) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(failure instanceof Unauthorised
        ? "Token jest nieprawidłowy albo wygasł." : `Nie udało się zalogować: ${failure.message}`);
    }
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#who").hidden = false;
    $("#who-login").textContent = state.me.login;
    $("#who-account").textContent = state.me.account_name || state.me.account;
    if (!state.me.services.length) notice("To konto nie ma jeszcze usług w katalogu – nowej wiadomości nie da się wysłać.");
    setUpNewMessage();
    await loadCases();
  }

  function takeTokenFromUrl() {
    const url = new URL(location.href);
    const token = url.searchParams.get("token");
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search);  // the token leaves the address bar
  }

  document.addEventListener("DOMContentLoaded", () => {
    // A file dropped next to a drop zone must not make the browser navigate away from the panel.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    $("#logout").addEventListener("click", () => logout(""));
    $("#refresh").addEventListener("click", () => { notice(""); loadCases(); });
    $("#prev").addEventListener("click", () => { state.page -= 1; loadCases(); });
    $("#next").addEventListener("click", () => { state.page += 1; loadCases(); });
    takeTokenFromUrl();
    const message = decodeURIComponent(location.hash.slice(1));
    if (message) history.replaceState(null, "", location.pathname);
    if (message && !sessionStorage.getItem(TOKEN_KEY)) showLogin(message);
    else start();
  });
})();
