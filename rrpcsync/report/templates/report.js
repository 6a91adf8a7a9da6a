// The fleet report's script: device search and sortable tables. The page reads fine without
// it; every string it shows goes through textContent, never through HTML.
(() => {
  "use strict";
  const PAGE = 100; // result rows added per "Show more"
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const label = (category) => category.replace("_", " ");
  const pick = (values, index) => (index !== undefined && index >= 0 ? values[index] : "");
  const keyOf = (product, name) => (product < 0 ? name : `${data.products[product]}/${name}`);

  // ------------------------------------------------------------------ every device
  const devices = [];
  for (const [manifest, product, category, deferred, names] of data.buckets) {
    for (const name of names) {
      devices.push({ key: keyOf(product, name), manifest, category: data.categories[category], deferred: deferred === 1 });
    }
  }
  // [manifest, product, name, code, at, attempts, message?, reply?, deferred?]
  for (const [manifest, product, name, code, at, attempts, message = -1, reply = -1, deferred = 0] of data.failed) {
    devices.push({ key: keyOf(product, name), manifest, category: "failed", deferred: deferred === 1, code, message, reply, at, attempts });
  }
  devices.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  for (const device of devices) device.lower = device.key.toLowerCase();

  // ------------------------------------------------------------------ search
  const search = document.getElementById("search");
  const status = document.getElementById("status");
  const codes = document.getElementById("code");
  const matches = document.getElementById("matches");
  const results = document.querySelector("#results tbody");
  const more = document.getElementById("more-results");
  data.codes.forEach((code, index) => {
    const option = document.createElement("option");
    option.value = String(index);
    option.textContent = code;
    codes.append(option);
  });

  let found = [];
  let shown = 0;

  function selected(device, text, wanted, code) {
    if (text && !device.lower.includes(text)) return false;
    if (wanted === "deferred") {
      if (!device.deferred) return false;
    } else if (wanted && device.category !== wanted) {
      return false;
    }
    return code === "" || device.code === Number(code);
  }

  function update() {
    const text = search.value.trim().toLowerCase();
    found = devices.filter((device) => selected(device, text, status.value, codes.value));
    results.replaceChildren();
    shown = 0;
    showMore();
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function showMore() {
    const end = Math.min(found.length, shown + PAGE);
    const rows = document.createDocumentFragment();
    for (; shown < end; shown += 1) {
      const device = found[shown];
      const row = document.createElement("tr");
      const key = document.createElement("code");
      key.textContent = device.key;
      cell(row, "").append(key);
      cell(row, label(device.category) + (device.deferred ? " (deferred)" : ""), "status");
      cell(row, pick(data.manifests, device.manifest));
      cell(row, pick(data.codes, device.code));
      cell(row, pick(data.messages, device.message), "message");
      cell(row, pick(data.messages, device.reply), "message");
      cell(row, pick(data.times, device.at));
      cell(row, device.attempts === undefined ? "" : String(device.attempts), "n");
      rows.append(row);
    }
    results.append(rows);
    const total = found.length.toLocaleString("en");
    matches.textContent = `${total} of ${devices.length.toLocaleString("en")} device(s) match; ${shown.toLocaleString("en")} shown.`;
    more.hidden = shown >= found.length;
  }

  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(update, 100);
  });
  status.addEventListener("change", update);
  codes.addEventListener("change", update);
  more.addEventListener("click", showMore);

  // "list all" next to each error code: the search, filtered to that code
  for (const row of document.querySelectorAll("table.codes tr[data-code]")) {
    const index = data.codes.indexOf(row.dataset.code);
    if (index < 0) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "list";
    button.textContent = "list all";
    button.addEventListener("click", () => {
      search.value = "";
      status.value = "";
      codes.value = String(index);
      update();
      document.getElementById("devices").scrollIntoView();
    });
    row.cells[0].append(" ", button);
  }

  // ------------------------------------------------------------------ sortable tables
  function sortValue(row, index, kind) {
    const td = row.cells[index];
    const value = td.dataset.v === undefined ? td.textContent : td.dataset.v;
    return kind === "num" ? Number(value) : value;
  }

  function sortBy(table, index, kind, th) {
    const before = th.getAttribute("aria-sort");
    const first = kind === "num" ? -1 : 1; // numbers: largest first
    const direction = before === "none" ? first : before === "ascending" ? -1 : 1;
    for (const other of table.tHead.rows[0].cells) {
      if (other.hasAttribute("aria-sort")) other.setAttribute("aria-sort", "none");
    }
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const compare = kind === "num" ? (a, b) => a - b : (a, b) => a.localeCompare(b);
    rows.sort((a, b) => direction * compare(sortValue(a, index, kind), sortValue(b, index, kind)));
    const limit = Number(table.dataset.limit || 0);
    rows.forEach((row, position) => row.classList.toggle("extra", limit > 0 && position >= limit));
    body.append(...rows);
  }

  for (const table of document.querySelectorAll("table.sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, index) => {
      const kind = th.dataset.sort;
      if (!kind) return;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.append(...th.childNodes);
      th.append(button);
      th.setAttribute("aria-sort", "none");
      button.addEventListener("click", () => sortBy(table, index, kind, th));
    });
  }

  document.getElementById("explorer").hidden = false;
  update();
})();
