// medrov: local stand-in for the jQuery, Bootstrap and bootstrap-table calls made by the inline scripts of the
// Great Expectations Data Docs, whose CDN copies are stripped so that opening the report makes no external
// request. It renders bootstrap-table definitions ({columns, data}) as plain HTML tables with
// clickable rows; every other jQuery call is a no-op.
(function () {
  function render(table, opts) {
    var columns = opts.columns || [];
    var data = (opts.data || []).slice();
    var sortName = opts.sortName;
    var column = columns.filter(function (c) { return c.field === sortName; })[0];
    var key = column && column.sortName ? column.sortName : sortName;
    if (key) {
      data.sort(function (a, b) { return a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0; });
      if (opts.sortOrder === "desc") data.reverse();
    }
    var html = "<thead><tr>" + columns.map(function (c) { return "<th>" + c.title + "</th>"; }).join("") + "</tr></thead><tbody>";
    data.forEach(function (row, i) {
      var attrs = typeof window[opts.rowAttributes] === "function" ? window[opts.rowAttributes](row, i) : {};
      var href = attrs["data-href"] ? ' class="clickable-row" data-href="' + attrs["data-href"] + '"' : "";
      html += "<tr" + href + ">" + columns.map(function (c) { return "<td>" + (row[c.field] == null ? "" : row[c.field]) + "</td>"; }).join("") + "</tr>";
    });
    table.innerHTML = html + "</tbody>";
    Array.prototype.forEach.call(table.querySelectorAll("tr[data-href]"), function (tr) {
      tr.addEventListener("click", function () { window.location = tr.getAttribute("data-href"); });
    });
  }
  function wrap(nodes) {
    var api = {
      length: nodes.length,
      bootstrapTable: function (opts) { if (typeof opts === "object") nodes.forEach(function (t) { render(t, opts); }); return proxy; },
      ready: function (fn) { document.addEventListener("DOMContentLoaded", fn); return proxy; },
      each: function (fn) { nodes.forEach(function (n, i) { fn(i, n); }); return proxy; },
      parent: function () { return wrap(nodes.map(function (n) { return n.parentNode; }).filter(Boolean)); },
      fadeIn: function () { nodes.forEach(function (n) { n.style.display = ""; }); return proxy; },
      fadeOut: function () { nodes.forEach(function (n) { n.style.display = "none"; }); return proxy; },
      removeClass: function (c) { nodes.forEach(function (n) { n.classList && n.classList.remove(c); }); return proxy; },
      data: function (k) { return nodes[0] && nodes[0].getAttribute ? nodes[0].getAttribute("data-" + k) : undefined; }
    };
    var proxy = new Proxy(api, { get: function (t, k) { return k in t ? t[k] : function () { return proxy; }; } });
    return proxy;
  }
  window.$ = window.jQuery = function (sel) {
    if (typeof sel === "function") { document.addEventListener("DOMContentLoaded", sel); return wrap([]); }
    if (typeof sel === "string") { try { return wrap(Array.prototype.slice.call(document.querySelectorAll(sel))); } catch (e) { return wrap([]); } }
    return wrap(sel ? [sel] : []);
  };
})();
