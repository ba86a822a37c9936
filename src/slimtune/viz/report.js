// slimtune report: draws the views from the page's JSON and links them. Clicking a point
// (a scatter marker, a hypervolume marker, a heatmap column or a table row) selects its
// trial in every view and shows its plan and export command. No network, no eval: every
// string from the run goes into the page as text, never as markup.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("slimtune-data").textContent);
  const points = data.points;
  const plotConfig = { displaylogo: false, responsive: true };
  const views = {};
  let selected = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function trialOf(pt) {
    let t = pt.customdata;
    if (Array.isArray(t)) t = t[0];
    return t === null || t === undefined || t === "" ? null : Number(t);
  }

  function selectedTraces(div) {
    return div.data.map((t, i) => (t.name === "selected" ? i : -1)).filter((i) => i >= 0);
  }

  function mark(view, p) {
    const div = views[view.id];
    const idx = selectedTraces(div);
    const key = view.keys[0];
    if (key === "plan") {
      const col = p ? view.columns.indexOf(p.trial) : -1;
      const shapes = [];
      if (col >= 0) {
        for (let k = 0; k < view.knobs; k++) {
          const axis = k ? "y" + (k + 1) : "y";
          shapes.push({ type: "rect", xref: "x", yref: axis + " domain",
                        x0: col + 0.5, x1: col + 1.5, y0: 0, y1: 1,
                        line: { color: "#000", width: 3 } });
        }
      }
      return Plotly.relayout(div, { shapes: shapes });
    }
    if (key === "history") {
      const h = p && p.history;
      return Plotly.restyle(div, { x: [h ? [h[0]] : [], h ? [h[1]] : []],
                                   y: [h ? [h[2]] : [], h ? [h[2]] : []] }, idx);
    }
    const have = p && view.keys.every((k) => p[k] !== null && p[k] !== undefined);
    const update = {};
    "xyz".slice(0, view.keys.length).split("").forEach((axis, i) => {
      update[axis] = [have ? [p[view.keys[i]]] : []];
    });
    return Plotly.restyle(div, update, idx);
  }

  function fmt(x, digits) { return Number(x).toFixed(digits); }

  function panel(p) {
    const body = document.getElementById("selection-body");
    body.replaceChildren();
    if (!p) { body.append(el("p", {}, "Click a point in any view.")); return; }
    const where = p.front ? "on the Pareto front"
      : p.infeasible ? "over a budget (infeasible)" : "dominated (off the front)";
    body.append(el("p", { class: "headline" }, el("b", {}, "trial " + p.trial), " · " + where));
    const ratio = (x, digits, what) => (x === null ? "" : " (" + fmt(x, digits) + "× " + what + ")");
    const stats = [
      ["size on disk", p.size_bytes.toLocaleString("en") + " B" + ratio(p.x_smaller, 1, "smaller")],
      ["bits per stored weight", p.bits_per_weight === null ? "not recorded" :
        fmt(p.bits_per_weight, 2) + (p.fixed_size_bytes === null ? "" : " (fixed-width: " +
        fmt(p.bits_per_weight * p.fixed_size_bytes / p.size_bytes, 2) + ", " +
        p.fixed_size_bytes.toLocaleString("en") + " B)")],
      ["effective MACs", p.flops.toLocaleString("en") + ratio(p.x_fewer, 2, "fewer")],
      ["validation accuracy", fmt(p.accuracy, 4) + (p.relative === null ? "" :
        " (" + fmt(100 * p.relative, 1) + " % of the teacher's)")],
      ["test accuracy", p.test ? fmt(p.test[0], 4) + " (" + p.test[1] + ")" :
        "not measured (slimtune finetune, or report --card of an exported file)"],
    ];
    if (p.latency_ms !== null) stats.push(["latency", fmt(p.latency_ms, 3) + " ms"]);
    if (p.distill && p.distill[0] !== null) {
      stats.push(["distillation", "T = " + fmt(p.distill[0], 2) + ", alpha = " + fmt(p.distill[1], 2)]);
    }
    const dl = el("dl", {});
    for (const [k, v] of stats) dl.append(el("dt", {}, k), el("dd", {}, v));
    body.append(dl);
    const cmd = el("pre", { id: "export-command" }, p.command);
    body.append(el("p", { class: "label" }, "Export it:"), cmd,
                el("button", { class: "copy", "data-copy": p.command }, "copy command"));
    if (p.plan && data.layers.length) {
      const head = el("tr", {}, el("th", {}, "layer"), ...data.knobs.map((k) => el("th", {}, k)));
      const rows = data.layers.map((name, i) =>
        el("tr", {}, el("td", {}, name), ...p.plan[i].map((v) => el("td", {}, v))));
      body.append(el("p", { class: "label" }, "Its plan, layer by layer:"),
                  el("table", { id: "selected-plan" }, el("thead", {}, head),
                     el("tbody", {}, ...rows)));
    }
  }

  function select(trial) {
    const p = points[String(trial)] || null;
    selected = p ? p.trial : null;
    for (const row of document.querySelectorAll("#front-table tr[data-trial]")) {
      row.classList.toggle("selected", p !== null && Number(row.dataset.trial) === p.trial);
    }
    panel(p);
    return Promise.all(data.views.map((v) => mark(v, p)));
  }

  function copy(text, button) {
    const done = () => { const old = button.textContent; button.textContent = "copied";
                         setTimeout(() => { button.textContent = old; }, 1200); };
    const fallback = () => {
      const area = el("textarea", {}, text);
      document.body.append(area); area.select();
      try { document.execCommand("copy"); done(); } finally { area.remove(); }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button.copy");
    if (button) { copy(button.dataset.copy, button); ev.stopPropagation(); return; }
    const row = ev.target.closest("#front-table tr[data-trial]");
    if (row) select(Number(row.dataset.trial));
  });

  const drawn = data.views.map((view) => {
    const div = document.getElementById(view.id);
    views[view.id] = div;
    return Plotly.newPlot(div, view.figure.data, view.figure.layout, plotConfig).then(() => {
      div.on("plotly_click", (ev) => {
        const pt = ev.points && ev.points[0];
        const trial = pt ? trialOf(pt) : null;
        if (trial !== null && points[String(trial)]) select(trial);
      });
    });
  });

  window.slimtune = { select: select, selected: () => selected, data: data };
  Promise.all(drawn)
    .then(() => select(data.selected))
    .then(() => { document.body.dataset.ready = "1"; });
})();
