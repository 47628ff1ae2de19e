/* leafscout station: pan and zoom the field map, load plant points when zoomed in, show a
 * plant's leaf on click, and keep robot tables current. No libraries, no tiles: it works
 * offline, on the dashboard (served from /static) and inlined in the HTML report.
 *
 * The map's numbers come from data-* attributes of svg.field-map (see station/web/svg.py):
 * data-m0/m1 (metres shown), data-left/span (their x range), data-top/lane (row lanes),
 * data-rows (row ids in lane order). #map-data carries the plants API URL and the filter.
 */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var POINTS_BELOW_M = 80;      // load plant points when the view spans fewer metres than this
  var MAX_ZOOM = 400;

  function num(el, name) { return parseFloat(el.getAttribute("data-" + name)); }

  function FieldMap(svg, card) {
    var vb = svg.getAttribute("viewBox").split(/\s+/).map(Number);
    this.svg = svg; this.card = card;
    this.base = { x: vb[0], y: vb[1], w: vb[2], h: vb[3] };
    this.view = { x: vb[0], y: vb[1], w: vb[2], h: vb[3] };
    this.rows = (svg.getAttribute("data-rows") || "").split(",").filter(Boolean).map(Number);
    this.geo = svg.hasAttribute("data-m0") ? {
      m0: num(svg, "m0"), m1: num(svg, "m1"), left: num(svg, "left"), span: num(svg, "span"),
      top: num(svg, "top"), lane: num(svg, "lane")
    } : null;
    // A map of GPS cells (no row numbers): x, y from longitude and latitude.
    this.gps = svg.getAttribute("data-geo") === "gps" ? {
      pad: num(svg, "pad"), lat1: num(svg, "lat1"), lon0: num(svg, "lon0"), coslat: num(svg, "coslat"),
      scale: num(svg, "scale")
    } : null;
    this.plantsLayer = svg.querySelector("g.plants");
    this.panel = card.querySelector(".map-panel");
    var data = document.getElementById("map-data");
    this.plantsUrl = data ? data.getAttribute("data-plants-url") : null;
    this.filter = data ? data.getAttribute("data-filter") : "";
    this.loadTimer = null; this.loaded = null; this.pending = null;
    this.texts = Array.prototype.slice.call(svg.querySelectorAll("text"));
    this.bind();
    this.apply();
  }

  FieldMap.prototype.xOf = function (metre) {
    var g = this.geo; return g.left + (metre - g.m0) / (g.m1 - g.m0) * g.span;
  };
  FieldMap.prototype.metreOf = function (x) {
    var g = this.geo; return g.m0 + (x - g.left) / g.span * (g.m1 - g.m0);
  };
  FieldMap.prototype.yOf = function (row) {
    var slot = this.rows.indexOf(row); var g = this.geo;
    return slot < 0 ? null : g.top + g.lane * slot + g.lane / 2;
  };
  FieldMap.prototype.zoom = function () { return this.base.w / this.view.w; };
  // Screen pixels per viewBox unit ("meet": the view fits the box both ways).
  FieldMap.prototype.pxPerUnit = function () {
    var rect = this.svg.getBoundingClientRect();
    if (!rect.width) return 1;
    return Math.min(rect.width / this.view.w, rect.height / this.view.h);
  };

  FieldMap.prototype.apply = function () {
    var v = this.view, z = this.zoom();
    this.svg.setAttribute("viewBox", [v.x, v.y, v.w, v.h].map(function (n) { return n.toFixed(3); }).join(" "));
    this.svg.setAttribute("data-zoom", z.toFixed(3));
    var unit = 1 / this.pxPerUnit();  // viewBox units per screen pixel
    this.texts.forEach(function (t) { t.style.fontSize = (11 / z) + "px"; });
    Array.prototype.forEach.call(this.svg.querySelectorAll("circle.robot"), function (c) { c.setAttribute("r", 4 * unit); });
    this.applyRadius();
    this.scheduleLoad();
  };

  FieldMap.prototype.clamp = function () {
    var b = this.base, v = this.view;
    var z = Math.min(MAX_ZOOM, Math.max(1, b.w / v.w));
    var cx = v.x + v.w / 2, cy = v.y + v.h / 2;
    v.w = b.w / z; v.h = b.h / z;
    cx = Math.min(b.x + b.w, Math.max(b.x, cx)); cy = Math.min(b.y + b.h, Math.max(b.y, cy));
    v.x = cx - v.w / 2; v.y = cy - v.h / 2;
    if (z === 1) { v.x = b.x; v.y = b.y; }
  };

  // Zoom by factor f keeping the point (px, py) in viewBox units where it is.
  FieldMap.prototype.zoomAt = function (f, px, py) {
    var v = this.view;
    if (px === undefined) { px = v.x + v.w / 2; py = v.y + v.h / 2; }
    v.x = px - (px - v.x) / f; v.y = py - (py - v.y) / f; v.w /= f; v.h /= f;
    this.clamp(); this.apply();
  };

  FieldMap.prototype.toView = function (clientX, clientY) {
    var pt = this.svg.createSVGPoint(); pt.x = clientX; pt.y = clientY;
    var p = pt.matrixTransform(this.svg.getScreenCTM().inverse());
    return { x: p.x, y: p.y };
  };

  FieldMap.prototype.focusOn = function (row, metre, zoom) {
    if (!this.geo) return;
    var y = this.yOf(row); if (y === null) return;
    var z = zoom || Math.max(4, (this.geo.m1 - this.geo.m0) / 20);
    this.view.w = this.base.w / z; this.view.h = this.base.h / z;
    this.view.x = this.xOf(metre) - this.view.w / 2; this.view.y = y - this.view.h / 2;
    this.clamp(); this.apply();
  };

  FieldMap.prototype.focusGps = function (lat, lon) {
    if (!this.gps) return;
    var at = this.gpsXY(lat, lon), z = Math.max(4, this.base.w / this.gps.scale * 111320 / 30);  // ~30 m wide
    this.view.w = this.base.w / z; this.view.h = this.base.h / z;
    this.view.x = at.x - this.view.w / 2; this.view.y = at.y - this.view.h / 2;
    this.clamp(); this.apply();
  };

  FieldMap.prototype.bind = function () {
    var self = this, svg = this.svg, pointers = {}, start = null, moved = false;
    svg.addEventListener("wheel", function (e) {
      e.preventDefault();
      var p = self.toView(e.clientX, e.clientY);
      self.zoomAt(e.deltaY < 0 ? 1.25 : 0.8, p.x, p.y);
    }, { passive: false });
    svg.addEventListener("pointerdown", function (e) {
      pointers[e.pointerId] = { x: e.clientX, y: e.clientY };
      svg.setPointerCapture(e.pointerId);
      start = { view: Object.assign({}, self.view), pointers: JSON.parse(JSON.stringify(pointers)) };
      moved = false;
    });
    svg.addEventListener("pointermove", function (e) {
      if (!pointers[e.pointerId] || !start) return;
      pointers[e.pointerId] = { x: e.clientX, y: e.clientY };
      var ids = Object.keys(pointers);
      if (ids.length === 1) {
        var p0 = start.pointers[ids[0]]; if (!p0) return;
        var dx = e.clientX - p0.x, dy = e.clientY - p0.y;
        if (Math.abs(dx) + Math.abs(dy) > 4) moved = true;
        if (!moved) return;
        svg.classList.add("panning");
        var k = Math.min(svg.getBoundingClientRect().width / start.view.w, svg.getBoundingClientRect().height / start.view.h);
        self.view.x = start.view.x - dx / k;
        self.view.y = start.view.y - dy / k;
        self.clamp(); self.apply();
      } else if (ids.length === 2 && start.pointers[ids[0]] && start.pointers[ids[1]]) {
        moved = true;
        var a0 = start.pointers[ids[0]], b0 = start.pointers[ids[1]], a = pointers[ids[0]], b = pointers[ids[1]];
        var d0 = Math.hypot(a0.x - b0.x, a0.y - b0.y), d1 = Math.hypot(a.x - b.x, a.y - b.y);
        if (d0 < 1) return;
        self.view = Object.assign({}, start.view);
        var mid = self.toView((a0.x + b0.x) / 2, (a0.y + b0.y) / 2);
        self.zoomAt(d1 / d0, mid.x, mid.y);
      }
    });
    function end(e) {
      delete pointers[e.pointerId];
      svg.classList.remove("panning");
      start = Object.keys(pointers).length ? { view: Object.assign({}, self.view), pointers: JSON.parse(JSON.stringify(pointers)) } : null;
    }
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
    svg.addEventListener("mouseover", function (e) { if (e.target.classList) ensureTitle(e.target); });
    svg.addEventListener("click", function (e) {
      if (moved) { moved = false; return; }
      var target = e.target.closest ? e.target.closest("circle.plant, rect.row-cell, rect.cell, rect.row") : null;
      if (target) self.show(target);
    });
    var tools = this.card.querySelector(".map-tools");
    if (tools) {
      tools.hidden = false;
      tools.addEventListener("click", function (e) {
        var z = e.target.getAttribute && e.target.getAttribute("data-zoom");
        if (z === "in") self.zoomAt(2); else if (z === "out") self.zoomAt(0.5);
        else if (z === "reset") { self.view = Object.assign({}, self.base); self.apply(); }
      });
      var toggle = tools.querySelector("[data-toggle=tracks]");
      if (toggle) toggle.addEventListener("change", function () { svg.classList.toggle("hide-tracks", !toggle.checked); });
    }
  };

  FieldMap.prototype.gpsXY = function (lat, lon) {
    var g = this.gps;
    return { x: g.pad + (lon - g.lon0) * g.coslat * g.scale, y: g.pad + (g.lat1 - lat) * g.scale };
  };

  // What the view shows: rows and metres (row map) or a latitude/longitude box (GPS map),
  // with the width in metres that decides whether plants are drawn.
  FieldMap.prototype.visible = function () {
    var v = this.view;
    if (this.gps) {
      var g = this.gps;
      var box = { lat_min: g.lat1 - (v.y + v.h - g.pad) / g.scale, lat_max: g.lat1 - (v.y - g.pad) / g.scale,
        lon_min: g.lon0 + (v.x - g.pad) / (g.coslat * g.scale), lon_max: g.lon0 + (v.x + v.w - g.pad) / (g.coslat * g.scale) };
      return { gps: box, metres: v.w / g.scale * 111320 };
    }
    var geo = this.geo, lane = geo.lane, rows = [];
    for (var i = 0; i < this.rows.length; i++) {
      var y = geo.top + lane * i + lane / 2;
      if (y >= v.y - lane && y <= v.y + v.h + lane) rows.push(this.rows[i]);
    }
    var m0 = this.metreOf(v.x), m1 = this.metreOf(v.x + v.w);
    return { rows: rows, m0: m0, m1: m1, metres: rows.length ? m1 - m0 : Infinity };
  };

  FieldMap.prototype.scheduleLoad = function () {
    var self = this;
    if (!this.plantsUrl || !(this.geo || this.gps)) return;
    clearTimeout(this.loadTimer);
    var vis = this.visible();
    if (vis.metres > POINTS_BELOW_M) {
      this.svg.setAttribute("data-points", "off");
      return;
    }
    this.loadTimer = setTimeout(function () { self.loadPoints(); }, 200);
  };

  FieldMap.prototype.loadPoints = function () {
    var self = this, vis = this.visible(), q;
    if (vis.metres > POINTS_BELOW_M) {
      this.svg.setAttribute("data-points", "off");
      return;
    }
    if (vis.gps) {
      q = ["lat_min", "lat_max", "lon_min", "lon_max"].map(function (k) { return k + "=" + vis.gps[k].toFixed(8); }).join("&");
    } else {
      q = "row_min=" + Math.min.apply(null, vis.rows) + "&row_max=" + Math.max.apply(null, vis.rows) +
        "&metre_min=" + (vis.m0 - 1).toFixed(2) + "&metre_max=" + (vis.m1 + 1).toFixed(2);
    }
    if (q === this.loaded || q === this.pending) return;
    this.pending = q;
    this.svg.setAttribute("data-points", "loading");
    fetch(this.plantsUrl + "?" + q + (this.filter ? "&" + this.filter : ""), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) {
        if (self.pending !== q) return;
        self.pending = null; self.loaded = q;
        self.drawPoints(data.plants);
        self.svg.setAttribute("data-points", data.truncated ? "truncated" : "loaded");
        self.svg.dispatchEvent(new CustomEvent("points", { detail: data.plants.length }));
      })
      .catch(function () { self.pending = null; self.svg.setAttribute("data-points", "error"); });
  };

  FieldMap.prototype.drawPoints = function (plants) {
    var layer = this.plantsLayer, self = this;
    while (layer.firstChild) layer.removeChild(layer.firstChild);
    plants.forEach(function (p) {
      var at;
      if (self.gps) {
        if (p.lat === null || p.lon === null) return;
        at = self.gpsXY(p.lat, p.lon);
      } else {
        var y = self.yOf(p.row); if (y === null || p.metre === null) return;
        at = { x: self.xOf(p.metre), y: y };
      }
      var outcome = p.uncertain ? "uncertain" : (p.diseased ? "diseased" : "healthy");
      var c = document.createElementNS(SVGNS, "circle");
      c.setAttribute("class", "plant " + outcome);
      c.setAttribute("cx", at.x); c.setAttribute("cy", at.y);
      c.setAttribute("data-record", p.record_id);
      c.setAttribute("data-thumbnail", p.thumbnail ? "1" : "0");
      c.plant = p;
      var t = document.createElementNS(SVGNS, "title");
      t.textContent = "plant " + p.plant_id + ": " + p.label + " (" + outcome + ", confidence " +
        p.confidence.toFixed(2) + "), " + place(p);
      c.appendChild(t);
      layer.appendChild(c);
    });
    this.applyRadius();
    if (this.focusRecord) {
      var hit = layer.querySelector('circle[data-record="' + cssEscape(this.focusRecord) + '"]');
      if (hit) { hit.classList.add("focus"); this.show(hit); this.focusRecord = null; }
    }
  };

  // Plant points keep about the same size on screen at any zoom.
  FieldMap.prototype.applyRadius = function () {
    var z = this.zoom(), unit = 1 / this.pxPerUnit();
    var r = (z < 4 ? 3 : 6) * unit;
    if (!this.plantsLayer) return;
    Array.prototype.forEach.call(this.plantsLayer.querySelectorAll("circle.plant"), function (c) { c.setAttribute("r", r); });
  };

  FieldMap.prototype.show = function (el) {
    var panel = this.panel; if (!panel) return;
    ensureTitle(el);
    while (panel.firstChild) panel.removeChild(panel.firstChild);
    var title = el.querySelector("title");
    var text = document.createElement("div");
    var p = el.plant;
    if (p) {
      if (p.thumbnail_url) {
        var img = document.createElement("img");
        img.src = p.thumbnail_url; img.alt = "leaf of plant " + p.plant_id; img.className = "plant-thumbnail";
        panel.appendChild(img);
      }
      var lines = [p.label + " (" + (p.uncertain ? "uncertain" : p.diseased ? "diseased" : "healthy") + ")",
        "confidence " + p.confidence.toFixed(2), "plant " + p.plant_id + ", robot " + p.robot_id,
        place(p),
        new Date(p.t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC"];
      if (!p.thumbnail_url) lines.push("no thumbnail (healthy plants and serial links send none)");
      lines.forEach(function (line) { var d = document.createElement("div"); d.textContent = line; text.appendChild(d); });
    } else {
      text.textContent = title ? title.textContent : "";
    }
    panel.appendChild(text);
    panel.hidden = false;
    panel.setAttribute("data-record", el.getAttribute("data-record") || "");
  };

  function place(p) {
    if (p.row !== null && p.metre !== null) return "row " + p.row + ", " + p.metre.toFixed(1) + " m";
    return p.lat !== null ? p.lat.toFixed(6) + ", " + p.lon.toFixed(6) : "no position";
  }

  function pct(x) { return x === "" || x === null ? "n/a" : (100 * parseFloat(x)).toFixed(1) + "%"; }

  // A row cell's numbers in words (svg.py leaves its <title> out to keep big pages small).
  function cellText(el) {
    var d = el.dataset, decided = d.plants - d.uncertain;
    return "row " + d.row + ", " + d.start + "-" + d.end + " m: " + pct(d.incidence) + " diseased (" + d.diseased +
      "/" + decided + (d.uncertain > 0 ? ", " + d.uncertain + " uncertain" : "") + "), 95% CI " + pct(d.ciLo) +
      "-" + pct(d.ciHi);
  }

  function ensureTitle(el) {
    if (el.querySelector("title") || !el.classList.contains("row-cell")) return;
    var t = document.createElementNS(SVGNS, "title"); t.textContent = cellText(el); el.appendChild(t);
  }

  function cssEscape(s) { return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/["\\]/g, "\\$&"); }

  // -- robot status tables refresh themselves -------------------------------------------
  function refreshRobots(table) {
    var url = table.getAttribute("data-refresh");
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) {
        var body = table.tBodies[0];
        while (body.firstChild) body.removeChild(body.firstChild);
        data.robots.forEach(function (r) {
          var tr = body.insertRow(); tr.setAttribute("data-robot", r.robot_id);
          var cells = [r.robot_id, r.last_seen === null ? "never" : r.age_text + " ago",
            r.queue_depth === null ? "" : String(r.queue_depth), null, r.status || ""];
          cells.forEach(function (text, i) {
            var td = tr.insertCell();
            if (i === 2) td.className = "num";
            if (text === null) { var s = document.createElement("span"); s.className = r.health_class; s.textContent = r.link; td.appendChild(s); }
            else td.textContent = text;
          });
        });
        if (!data.robots.length) {
          var td = body.insertRow().insertCell(); td.colSpan = 5; td.className = "muted"; td.textContent = "No robot has reported yet.";
        }
        table.setAttribute("data-refreshed", String(data.now));
      })
      .catch(function () { table.setAttribute("data-refreshed", "error"); });
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll(".map-card"), function (card) {
      var svg = card.querySelector("svg.field-map");
      if (!svg || !svg.hasAttribute("viewBox")) return;
      var map = new FieldMap(svg, card);
      card.fieldMap = map;
      var params = new URLSearchParams(window.location.search);
      map.focusRecord = params.get("focus");
      if (params.has("focus_row") && params.has("focus_metre")) {
        map.focusOn(parseInt(params.get("focus_row"), 10), parseFloat(params.get("focus_metre")));
      } else if (params.has("focus_lat") && params.has("focus_lon")) {
        map.focusGps(parseFloat(params.get("focus_lat")), parseFloat(params.get("focus_lon")));
      }
    });
    Array.prototype.forEach.call(document.querySelectorAll("table.robots[data-refresh]"), function (table) {
      setInterval(function () { refreshRobots(table); }, 5000);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
