// The operations page of modelgate's admin listener (src/admin/ui.rs serves it).
//
// Plain DOM, no framework, no build step. Every few seconds it reads the documented admin API
// (api/admin.openapi.yaml: GET /admin/v1/routes and GET /admin/v1/models) and redraws:
// per model, its versions and route weights, small time series of each routed version's request
// rate, error rate, p50 and p99 (computed here from the route's sliding windows, read after read),
// and its rollout: step, checks, events, and the buttons that call the API's commands.
// Every few reads it also reads the registry through the admin API's registry reads
// (GET /admin/v1/registry/...): per version and feature the drift statistic over time against
// its threshold, one feature's reference and current distributions, the alias history, and each
// version's aliases, digest and lineage in the models list.
//
// Safety rules of this file:
// - Strings from the API reach the page only as text nodes (`el`, `textContent`): never through
//   HTML parsing, so a name, reason or message holding markup is shown, not run.
// - The token lives in this tab's sessionStorage only; it is sent in the Authorization header
//   and nowhere else (no URL, no cookie).
'use strict';

(() => {
  const TOKEN_KEY = 'modelgate.adminToken';
  const POLL_MS = 3000;
  const HISTORY_MS = 10 * 60 * 1000;
  const CHECKS_KEPT = 12;
  const ACTOR = 'ops-page';
  const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];
  const METRICS = [
    { key: 'rate', title: 'requests/s' },
    { key: 'errors', title: 'errors %' },
    { key: 'p50', title: 'p50 ms' },
    { key: 'p99', title: 'p99 ms' },
  ];

  // === DOM helpers ===

  // A new element: `attrs` are attributes (`class`, and `on<event>` for listeners), `children`
  // are nodes or values shown as text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);

  function fmt(value, digits) {
    if (value === undefined || value === null || Number.isNaN(value)) return '–';
    return Number(value).toFixed(digits);
  }

  function clock(unixMs) {
    return new Date(unixMs).toLocaleTimeString();
  }

  function setStatus(kind, text) {
    const status = $('status');
    status.className = 'status-' + kind;
    status.textContent = text;
  }

  // === The token ===

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  function askForToken(message) {
    token.clear();
    $('main').hidden = true;
    $('forget-token').hidden = true;
    $('login').hidden = false;
    $('login-message').textContent =
      message || "This page calls the gateway's admin API, which needs its bearer token.";
    $('login-message').className = message ? 'error' : '';
    setStatus('login', 'token needed');
    $('token').focus();
  }

  // === The admin API ===

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status; // 0: no answer
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + token.get(), 'x-modelgate-actor': ACTOR };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'the gateway does not answer');
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (e) {
      payload = null; // not JSON: the status text explains
    }
    if (!response.ok) {
      const message = payload && typeof payload.error === 'string' ? payload.error : response.statusText;
      throw new ApiError(response.status, message);
    }
    return payload;
  }

  const routePath = (model, action) =>
    '/admin/v1/routes/' + encodeURIComponent(model) + (action ? '/' + action : '');

  // A failed call: a refused token sends the operator back to the login form; anything else is
  // shown where it happened (`show`), and the page keeps polling, so it reconnects by itself.
  function failed(error, show) {
    if (error.status === 401) {
      askForToken('The gateway refused the token (' + error.message + '): it is wrong, or it was changed. Enter it again.');
      return;
    }
    const text = error.status === 0
      ? 'Gateway unreachable (' + error.message + '): retrying every ' + POLL_MS / 1000 + ' s.'
      : 'Refused (' + error.status + '): ' + error.message;
    show(text);
  }

  // === What the page remembers between reads ===

  // model -> { times: [unix s], versions: Map(version -> { rate: [], errors: [], p50: [], p99: [] }) }
  const history = new Map();
  // model -> [{ at, check }]: the distinct rollout checks seen, newest last.
  const checksSeen = new Map();
  // model -> card (see makeCard)
  const cards = new Map();

  function record(route, nowMs) {
    let h = history.get(route.model);
    if (!h) {
      h = { times: [], versions: new Map() };
      history.set(route.model, h);
    }
    h.times.push(nowMs / 1000);
    for (const target of route.targets) {
      let series = h.versions.get(target.version);
      if (!series) {
        const gap = () => new Array(h.times.length - 1).fill(null);
        series = { rate: gap(), errors: gap(), p50: gap(), p99: gap() };
        h.versions.set(target.version, series);
      }
      const w = target.window;
      const seconds = w.span_ms / 1000;
      series.rate.push(seconds > 0 ? w.requests / seconds : null);
      series.errors.push(w.requests > 0 ? 100 * w.error_rate : null);
      series.p50.push(w.p50_ms ?? null);
      series.p99.push(w.p99_ms ?? null);
    }
    // Versions no longer in the route get gaps; the oldest points fall off.
    for (const [version, series] of h.versions) {
      if (!route.targets.some((t) => t.version === version)) {
        for (const m of METRICS) series[m.key].push(null);
      }
    }
    const cutoff = (nowMs - HISTORY_MS) / 1000;
    while (h.times.length > 1 && h.times[0] < cutoff) {
      h.times.shift();
      for (const series of h.versions.values()) for (const m of METRICS) series[m.key].shift();
    }
    const rollout = route.rollout;
    if (rollout && rollout.last_check) {
      const seen = checksSeen.get(route.model) || [];
      const key = JSON.stringify([rollout.step, rollout.failed_checks, rollout.last_check]);
      if (!seen.length || seen[seen.length - 1].key !== key) {
        seen.push({ key, at: nowMs, step: rollout.step, check: rollout.last_check });
        if (seen.length > CHECKS_KEPT) seen.shift();
        checksSeen.set(route.model, seen);
      }
    }
  }

  // === Reading and drawing ===

  let lastRoutes = new Map();
  let lastIndex = new Map();

  async function refresh() {
    if (!token.get()) return;
    let routes, index;
    try {
      [routes, index] = await Promise.all([api('GET', '/admin/v1/routes'), api('GET', '/admin/v1/models')]);
    } catch (error) {
      failed(error, (text) => setStatus(error.status === 0 ? 'down' : 'error', text));
      return;
    }
    const now = Date.now();
    lastRoutes = new Map(routes.routes.map((r) => [r.model, r]));
    lastIndex = new Map();
    for (const row of index) {
      if (!lastIndex.has(row.name)) lastIndex.set(row.name, []);
      if (row.version !== undefined) lastIndex.get(row.name).push(row);
      else if (row.reason) lastIndex.get(row.name).push(row);
    }
    for (const route of lastRoutes.values()) record(route, now);
    for (const model of history.keys()) {
      if (!lastRoutes.has(model)) {
        history.delete(model);
        checksSeen.delete(model);
      }
    }
    $('login').hidden = true;
    $('main').hidden = false;
    $('forget-token').hidden = false;
    setStatus('ok', 'live, read at ' + clock(now));
    render();
    await refreshRegistry(false);
  }

  function render() {
    const names = [...new Set([...lastRoutes.keys(), ...lastIndex.keys()])].sort();
    const rollouts = [...lastRoutes.values()].filter((r) => r.rollout).length;
    $('models-summary').textContent =
      names.length + ' models, ' + lastRoutes.size + ' routes, ' + rollouts + ' rollouts';
    const container = $('models');
    for (const [name, card] of cards) {
      if (!names.includes(name)) {
        destroyCharts(card);
        card.root.remove();
        cards.delete(name);
      }
    }
    const filter = $('filter').value.trim().toLowerCase();
    let previous = null;
    for (const name of names) {
      let card = cards.get(name);
      if (!card) {
        // Open at first: every card of a small gateway; of a large one, the first few rollouts in
        // progress (each open card draws four charts: hundreds would stall the page).
        const route = lastRoutes.get(name);
        const live = route && route.rollout && ['progressing', 'paused'].includes(route.rollout.state);
        card = makeCard(name, names.length <= OPEN_ALL_UP_TO || (live && openCards() < OPEN_ROLLOUTS));
        cards.set(name, card);
      }
      // Keep the cards in name order without moving those already in place.
      const expected = previous ? previous.nextSibling : container.firstChild;
      if (expected !== card.root) container.insertBefore(card.root, expected);
      previous = card.root;
      card.root.hidden = filter !== '' && !name.toLowerCase().includes(filter);
      updateCard(card);
    }
  }

  // === A model's card ===

  const OPEN_ALL_UP_TO = 20;
  const OPEN_ROLLOUTS = 6;
  const openCards = () => [...cards.values()].filter((c) => c.root.open).length;


  function makeCard(name, open) {
    const card = {
      name,
      root: el('details', { class: 'model', open }),
      badges: el('span', { class: 'badges' }),
      versions: el('div', { class: 'versions' }),
      charts: el('div', { class: 'charts' }),
      rollout: el('div', { class: 'rollout' }),
      actions: el('div', { class: 'actions' }),
      message: el('p', { class: 'message', role: 'alert' }),
      plots: null, // { versions: "1,2", list: [uPlot] }
      editing: false,
    };
    card.root.dataset.model = name;
    card.root.append(
      el('summary', {}, el('span', { class: 'name' }, name), card.badges),
      card.versions, card.charts, card.rollout, card.actions, card.message,
    );
    card.root.addEventListener('toggle', () => updateCard(card));
    return card;
  }

  function badge(text, kind) {
    return el('span', { class: 'badge badge-' + kind }, text);
  }

  function updateCard(card) {
    const route = lastRoutes.get(card.name);
    const rows = lastIndex.get(card.name) || [];
    card.badges.replaceChildren(route ? badge('route', 'route') : badge('no route', 'plain'));
    if (route && route.rollout) card.badges.append(badge('rollout ' + route.rollout.state, route.rollout.state));
    if (route && route.targets.some((t) => t.drift && t.drift.drifted)) card.badges.append(badge('drifted', 'failed'));
    if (!card.root.open) return;
    card.versions.replaceChildren(versionsTable(route, rows));
    if (route) {
      updateCharts(card);
      card.rollout.replaceChildren(...(route.rollout ? rolloutPanel(route) : []));
      if (!card.editing) card.actions.replaceChildren(...actionButtons(card, route));
    } else {
      destroyCharts(card);
      card.charts.replaceChildren(el('p', { class: 'hint' },
        'No route: requests to this model go to its latest ready version, and no window is kept.'));
      card.rollout.replaceChildren();
      card.actions.replaceChildren();
      card.editing = false;
    }
  }

  function versionsTable(route, rows) {
    const targets = new Map((route ? route.targets : []).map((t) => [t.version, t]));
    const versions = new Map(rows.filter((r) => r.version !== undefined).map((r) => [Number(r.version), r]));
    for (const v of targets.keys()) if (!versions.has(v)) versions.set(v, null);
    const modelReasons = rows.filter((r) => r.version === undefined && r.reason);
    const known = registryVersionsOf(route ? route.model : (rows[0] && rows[0].name));
    const head = el('tr', {}, ['version', 'state', 'weight', 'in flight', 'req/s', 'errors %', 'p50 ms', 'p99 ms', 'drift',
      'registry', 'note'].map((h) => el('th', { scope: 'col' }, h)));
    const body = [...versions.keys()].sort((a, b) => a - b).map((v) => {
      const row = versions.get(v);
      const t = targets.get(v);
      const w = t && t.window;
      const notes = [];
      if (route && route.rollout && route.rollout.canary === v) notes.push('canary');
      if (route && route.rollout && route.rollout.baseline === v) notes.push('baseline');
      if (route && route.shadow && route.shadow.version === v) notes.push('shadow ' + route.shadow.percent + ' %');
      if (t && t.failed) notes.push('rolled back');
      if (row && row.reason) notes.push(row.reason);
      return el('tr', { 'data-version': v },
        el('td', {}, String(v)),
        el('td', {}, row ? row.state : (t && t.ready ? 'READY' : '–')),
        el('td', { class: 'weight' }, t ? t.weight + ' %' : '–'),
        el('td', {}, t ? t.in_flight + (t.max_in_flight ? ' / ' + t.max_in_flight : '') : '–'),
        el('td', {}, w && w.span_ms > 0 ? fmt(w.requests / (w.span_ms / 1000), 1) : '–'),
        el('td', {}, w && w.requests > 0 ? fmt(100 * w.error_rate, 2) : '–'),
        el('td', {}, w ? fmt(w.p50_ms, 1) : '–'),
        el('td', {}, w ? fmt(w.p99_ms, 1) : '–'),
        el('td', { class: 'drift' + (t && t.drift && t.drift.drifted ? ' error' : '') }, driftText(t && t.drift)),
        el('td', { class: 'registry' }, registryCell(known && known.get(v))),
        el('td', { class: 'note' }, notes.join('; ')));
    });
    const table = body.length ? el('table', {}, el('thead', {}, head), el('tbody', {}, body)) : null;
    return el('div', { class: 'table-wrap' }, table,
      modelReasons.map((r) => el('p', { class: 'reason error' }, r.reason)));
  }

  // === Charts ===

  const hasCharts = () => typeof window.uPlot === 'function';

  function destroyCharts(card) {
    if (card.plots) for (const plot of card.plots.list) plot.destroy();
    card.plots = null;
  }

  function chartWidth(card) {
    const width = card.charts.clientWidth || card.root.clientWidth || 600;
    const columns = width >= 720 ? 4 : width >= 320 ? 2 : 1;
    return Math.max(160, Math.floor(width / columns) - 12);
  }

  function updateCharts(card) {
    const h = history.get(card.name);
    if (!h) return;
    if (!hasCharts()) {
      card.charts.replaceChildren();
      return;
    }
    const versions = [...h.versions.keys()].sort((a, b) => a - b);
    const key = versions.join(',');
    if (!card.plots || card.plots.versions !== key) {
      destroyCharts(card);
      card.charts.replaceChildren();
      const width = chartWidth(card);
      const list = METRICS.map((metric) => {
        const holder = el('div', { class: 'chart', 'data-metric': metric.key });
        card.charts.append(holder);
        const options = {
          title: metric.title,
          width,
          height: 130,
          scales: { x: { time: true } },
          axes: [{ size: 30 }, { size: 44 }],
          series: [{}, ...versions.map((v, i) => ({
            label: 'v' + v,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
          }))],
        };
        return new window.uPlot(options, chartData(h, versions, metric.key), holder);
      });
      card.plots = { versions: key, list };
    } else {
      card.plots.list.forEach((plot, i) => plot.setData(chartData(h, versions, METRICS[i].key)));
    }
    // At least the last minute on the time axis: a first point alone would span years.
    const last = h.times[h.times.length - 1];
    for (const plot of card.plots.list) plot.setScale('x', { min: Math.min(h.times[0], last - 60), max: last });
  }

  function chartData(h, versions, key) {
    return [h.times.slice(), ...versions.map((v) => h.versions.get(v)[key].slice())];
  }

  function resizeCharts() {
    for (const card of cards.values()) {
      if (!card.plots) continue;
      const width = chartWidth(card);
      for (const plot of card.plots.list) plot.setSize({ width, height: 130 });
    }
  }

  // === Rollouts ===

  function windowCells(w) {
    if (!w) return [el('td', {}, '–'), el('td', {}, '–'), el('td', {}, '–')];
    return [
      el('td', {}, w.requests + ' req'),
      el('td', {}, fmt(100 * w.error_rate, 2) + ' %'),
      el('td', {}, fmt(w.p99_ms, 1) + ' ms'),
    ];
  }

  function rolloutPanel(route) {
    const r = route.rollout;
    const spec = (route.spec && route.spec.rollout) || {};
    const steps = r.step_weights.map((weight, i) =>
      el('li', { class: i < r.step ? 'done' : i === r.step ? 'current' : '' }, weight + ' %'));
    const facts = el('p', { class: 'facts' },
      badge(r.state, r.state), ' ',
      'canary v' + r.canary + ' at ' + r.canary_weight + ' %, baseline v' + r.baseline +
      '; step ' + Math.min(r.step + 1, r.step_weights.length) + ' of ' + r.step_weights.length +
      '; failed checks in a row ' + r.failed_checks + (spec.threshold ? ' of ' + spec.threshold : ''),
      r.reason ? el('span', { class: 'reason' }, ' (' + r.reason + ')') : null);
    const seen = checksSeen.get(route.model) || [];
    const checks = el('table', { class: 'checks' },
      el('caption', {}, 'Checks seen by this page (one per read, newest first)'),
      el('thead', {}, el('tr', {}, ['time', 'step', 'verdict', 'SLO', 'canary', '', '', 'baseline', '', '']
        .map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, [...seen].reverse().map((s) => el('tr', { class: 'verdict-' + s.check.verdict },
        el('td', {}, clock(s.at)),
        el('td', {}, String(s.step + 1)),
        el('td', {}, s.check.verdict),
        el('td', {}, s.check.slo || ''),
        ...windowCells(s.check.canary),
        ...windowCells(s.check.baseline)))));
    const events = el('ol', { class: 'events' }, [...r.events].reverse().map((e) =>
      el('li', {}, el('time', {}, clock(e.at_unix_ms)), ' ', el('strong', {}, e.kind), ' ', e.message)));
    return [
      el('h3', {}, 'Rollout'),
      facts,
      el('ol', { class: 'steps' }, steps),
      el('div', { class: 'table-wrap' }, checks),
      el('h4', {}, 'Events'),
      events,
    ];
  }

  // === Commands ===

  // Each command's button shows in the rollout states where the API accepts it (`when`); a
  // promote after a rollback is the operator's override.
  const COMMANDS = [
    { action: 'pause', label: 'Pause', when: ['progressing'], ask: (m) => 'Pause the rollout of ' + m + '? It stops stepping up; an SLO breach still rolls back.' },
    { action: 'resume', label: 'Resume', when: ['paused'], ask: (m) => 'Resume the rollout of ' + m + ' from its current step?' },
    { action: 'promote', label: 'Promote', when: ['progressing', 'paused', 'failed'], ask: (m, r) => 'Promote ' + m + ': send canary v' + r.canary + ' 100 % and end the rollout?' },
    { action: 'rollback', label: 'Roll back', when: ['progressing', 'paused'], ask: (m, r) => 'Roll back ' + m + ': send canary v' + r.canary + ' 0 %, mark it failed and end the rollout?' },
  ];

  function actionButtons(card, route) {
    const buttons = [el('button', { type: 'button', class: 'set-weights', onclick: () => openWeights(card) }, 'Set weights…')];
    if (route.rollout) {
      for (const command of COMMANDS.filter((c) => c.when.includes(route.rollout.state))) {
        buttons.push(el('button', {
          type: 'button',
          class: 'command-' + command.action,
          onclick: () => runCommand(card, command),
        }, command.label));
      }
    }
    return buttons;
  }

  function say(card, kind, text) {
    card.message.className = 'message ' + kind;
    card.message.textContent = text;
  }

  async function send(card, method, path, body, done) {
    try {
      await api(method, path, body);
      say(card, 'ok', done);
      await refresh();
    } catch (error) {
      failed(error, (text) => say(card, 'error', text));
    }
  }

  function runCommand(card, command) {
    const route = lastRoutes.get(card.name);
    if (!route || !route.rollout) return;
    if (!window.confirm(command.ask(card.name, route.rollout))) return;
    send(card, 'POST', routePath(card.name, command.action), undefined,
      command.label + ': done at ' + clock(Date.now()) + '.');
  }

  function openWeights(card) {
    const route = lastRoutes.get(card.name);
    if (!route) return;
    card.editing = true;
    const inputs = route.targets.map((t) => el('input', {
      type: 'number', min: 0, max: 100, step: 1, value: t.weight, 'data-version': t.version, 'aria-label': 'weight of v' + t.version,
    }));
    const sum = el('span', { class: 'sum' });
    const showSum = () => {
      const total = inputs.reduce((acc, input) => acc + Number(input.value || 0), 0);
      sum.textContent = 'sum ' + total + ' % (the API wants 100)';
    };
    inputs.forEach((input) => input.addEventListener('input', showSum));
    showSum();
    const close = () => {
      card.editing = false;
      updateCard(card);
    };
    const form = el('form', { class: 'weights' },
      inputs.map((input) => el('label', {}, 'v' + input.dataset.version + ' ', input, ' %')),
      sum,
      el('button', { type: 'submit' }, 'Apply'),
      el('button', { type: 'button', onclick: close }, 'Cancel'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const weights = inputs.map((input) => ({ version: Number(input.dataset.version), weight: Number(input.value) }));
      const text = weights.map((w) => 'v' + w.version + ' ' + w.weight + ' %').join(', ');
      const pauses = route.rollout ? ' This pauses the rollout.' : '';
      if (!window.confirm('Set the weights of ' + card.name + ' to ' + text + '?' + pauses)) return;
      card.editing = false;
      send(card, 'PUT', routePath(card.name, 'weights'), { weights }, 'Weights set: ' + text + '.');
    });
    card.actions.replaceChildren(form);
    inputs[0].focus();
  }

  // === The registry: drift and alias history ===

  // The admin API's registry reads; `{model}` and `{version}` are filled in by registryPath.
  const REGISTRY = {
    models: '/admin/v1/registry/models',
    versions: '/admin/v1/registry/models/{model}/versions',
    history: '/admin/v1/registry/models/{model}/history',
    drift: '/admin/v1/registry/models/{model}/drift',
    distribution: '/admin/v1/registry/models/{model}/versions/{version}/drift/distribution',
  };
  const REGISTRY_EVERY = 3; // the registry is read every third poll
  const DRIFT_EVALUATIONS = 60; // evaluations per version drawn over time
  const VERSIONS_MAX_AGE_MS = 30 * 1000;

  const registry = {
    names: [], // registered models
    available: false, // whether the last read of the registry answered
    selected: null,
    version: null, // the version whose features are shown
    feature: null, // the feature drawn
    versions: new Map(), // model -> { at, rows: Map(version -> row) }
    plots: [],
    polls: 0,
  };

  function registryPath(key, model, version, query) {
    let path = REGISTRY[key].replace('{model}', encodeURIComponent(model)).replace('{version}', String(version));
    if (query) path += '?' + new URLSearchParams(query).toString();
    return path;
  }

  function registryVersionsOf(model) {
    const known = model && registry.versions.get(model);
    return known ? known.rows : null;
  }

  // A served version's drift, as the route status carries it.
  function driftText(mark) {
    if (!mark) return '–';
    const worst = mark.worst;
    const state = mark.drifted ? 'drifted' : 'no drift';
    if (!worst) return state;
    return state + ' (worst ' + worst.feature + ': ' + worst.stat + ' ' + fmt(worst.value, 3) +
      ', bound ' + fmt(worst.threshold, 3) + ')';
  }

  function shortDigest(digest) {
    if (!digest) return '';
    const hex = digest.replace(/^sha256:/, '');
    return 'sha256:' + hex.slice(0, 12) + '…';
  }

  function lineageText(lineage) {
    if (!lineage) return '';
    const parts = [];
    if (lineage.run_id) parts.push('run ' + lineage.run_id);
    if (lineage.git_commit) parts.push('commit ' + String(lineage.git_commit).slice(0, 12));
    if (lineage.dataset_digest) parts.push('data ' + shortDigest(lineage.dataset_digest));
    return parts.join(', ');
  }

  // The registry's facts on one served version: aliases, digest, lineage.
  function registryCell(row) {
    if (!row) return '–';
    const aliases = (row.aliases || []).map((a) => badge('@' + a, 'route'));
    const digest = row.manifest_digest
      ? el('code', { class: 'digest', title: row.manifest_digest }, shortDigest(row.manifest_digest)) : null;
    const lineage = lineageText(row.lineage);
    return el('span', { class: 'registry-facts' }, aliases, ' ', digest, lineage ? el('span', { class: 'hint' }, ' ' + lineage) : null);
  }

  function sayRegistry(kind, text) {
    const message = $('registry-message');
    message.className = 'message ' + kind;
    message.textContent = text;
  }

  // Reads the registry every REGISTRY_EVERY polls (or now, with `force`): the models, then the
  // chosen model's drift and alias history, then the versions of the registered models whose
  // cards are open.
  async function refreshRegistry(force) {
    if (!force && registry.polls++ % REGISTRY_EVERY !== 0) return;
    let names;
    try {
      names = (await api('GET', REGISTRY.models)).models.map((m) => m.name).sort();
    } catch (error) {
      registry.available = false;
      failed(error, (text) => sayRegistry('error', 'Registry: ' + text));
      return;
    }
    registry.available = true;
    sayRegistry('', '');
    registry.names = names;
    const select = $('registry-model');
    if (!names.includes(registry.selected)) registry.selected = names[0] || null;
    if (select.options.length !== names.length || [...select.options].some((o, i) => o.value !== names[i])) {
      select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
    }
    select.value = registry.selected || '';
    if (!registry.selected) {
      $('drift-summary').textContent = 'The registry holds no model.';
      return;
    }
    const model = registry.selected;
    const [drift, history] = await Promise.allSettled([
      api('GET', registryPath('drift', model, 0, { history: DRIFT_EVALUATIONS })),
      api('GET', registryPath('history', model)),
    ]);
    if (model !== registry.selected) return; // another model was chosen meanwhile
    if (drift.status === 'fulfilled') await renderDrift(model, drift.value);
    else failed(drift.reason, (text) => sayRegistry('error', 'Drift of ' + model + ': ' + text));
    if (history.status === 'fulfilled') renderAliasHistory(history.value.history);
    else failed(history.reason, (text) => sayRegistry('error', 'Alias history of ' + model + ': ' + text));
    await refreshCardVersions();
  }

  // The registry's versions of each registered model whose card is open (at most every 30 s).
  async function refreshCardVersions() {
    const now = Date.now();
    const wanted = [...cards.values()]
      .filter((c) => c.root.open && !c.root.hidden && registry.names.includes(c.name))
      .filter((c) => { const k = registry.versions.get(c.name); return !k || now - k.at > VERSIONS_MAX_AGE_MS; })
      .slice(0, 20);
    for (const card of wanted) {
      try {
        const answer = await api('GET', registryPath('versions', card.name));
        registry.versions.set(card.name, { at: now, rows: new Map(answer.versions.map((r) => [Number(r.version), r])) });
        updateCard(card);
      } catch (error) {
        // Kept as they were, and asked again at the next registry read; an unreachable gateway
        // is already said at the top of the page.
        const known = registry.versions.get(card.name);
        registry.versions.set(card.name, { at: now - VERSIONS_MAX_AGE_MS, rows: known ? known.rows : null });
        if (error.status !== 0) failed(error, (text) => say(card, 'error', 'Registry versions: ' + text));
      }
    }
  }

  // What a verdict is compared with: the p-value for tests (drifts below α), the statistic for
  // distances (drifts at or above the bound).
  function score(verdict) {
    return verdict.p_value !== undefined && verdict.p_value !== null ? verdict.p_value : verdict.value;
  }

  function isTest(verdict) {
    return verdict.p_value !== undefined && verdict.p_value !== null;
  }

  // The feature furthest past its bound in an evaluation (drifted ones first).
  function worstFeature(evaluation) {
    let worst = null;
    let worstKey = null;
    for (const [name, v] of Object.entries(evaluation.features)) {
      if (v.no_verdict !== undefined) continue;
      const relative = isTest(v) ? (v.threshold > 0 ? v.threshold / Math.max(v.p_value, 1e-300) : 0)
        : (v.threshold > 0 ? v.value / v.threshold : v.value);
      const key = [v.drifted ? 1 : 0, relative];
      if (!worstKey || key[0] > worstKey[0] || (key[0] === worstKey[0] && key[1] > worstKey[1])) {
        worst = name;
        worstKey = key;
      }
    }
    return worst;
  }

  function destroyDriftCharts() {
    for (const plot of registry.plots) plot.destroy();
    registry.plots = [];
  }

  async function renderDrift(model, answer) {
    const settings = answer.settings;
    const versions = Object.entries(answer.versions)
      .map(([v, x]) => ({ version: Number(v), evaluations: x.evaluations }))
      .filter((x) => x.evaluations.length)
      .sort((a, b) => a.version - b.version);
    $('drift-summary').textContent = 'Evaluated every ' + settings.every_seconds + ' s over the last ' +
      settings.span_seconds + ' s of traffic (at least ' + settings.min_rows + ' rows a feature); a version drifts when ' +
      fmt(100 * settings.drift_share, 0) + ' % of its features do.' +
      (versions.length ? '' : ' No evaluation of ' + model + ' yet: it needs a reference (or a production baseline) and traffic.');
    if (!versions.some((x) => x.version === registry.version)) {
      const drifted = versions.filter((x) => x.evaluations[0].dataset.drifted);
      const pick = drifted.length ? drifted[drifted.length - 1] : versions[versions.length - 1];
      registry.version = pick ? pick.version : null;
      registry.feature = null;
    }
    $('drift-versions').replaceChildren(driftVersionsTable(versions));
    const chosen = versions.find((x) => x.version === registry.version);
    destroyDriftCharts();
    $('drift-charts').replaceChildren();
    if (!chosen) {
      $('drift-features').replaceChildren();
      return;
    }
    const latest = chosen.evaluations[0];
    if (!registry.feature || !(registry.feature in latest.features)) registry.feature = worstFeature(latest);
    $('drift-features').replaceChildren(driftFeaturesTable(chosen));
    if (!registry.feature) return;
    drawDriftHistory(chosen);
    try {
      const shown = await api('GET', registryPath('distribution', model, chosen.version, { feature: registry.feature }));
      if (model === registry.selected && shown.feature === registry.feature) drawDistribution(shown);
    } catch (error) {
      failed(error, (text) => $('drift-charts').append(el('p', { class: 'error' }, 'Distribution: ' + text)));
    }
  }

  function driftVersionsTable(versions) {
    const head = el('tr', {}, ['version', 'drift', 'drifted features', 'rows', 'evaluated', 'worst feature', '']
      .map((h) => el('th', { scope: 'col' }, h)));
    const body = versions.map((x) => {
      const e = x.evaluations[0];
      const drifted = e.dataset.drifted || (e.versus_stable && e.versus_stable.dataset.drifted);
      const worst = worstFeature(e);
      return el('tr', { 'data-version': x.version, class: (drifted ? 'drifted' : 'steady') + (x.version === registry.version ? ' chosen' : '') },
        el('td', {}, String(x.version)),
        el('td', { class: drifted ? 'error' : 'ok' }, drifted ? 'drifted' : 'no drift',
          e.versus_stable && e.versus_stable.dataset.drifted ? ' (predictions vs v' + e.versus_stable.stable_version + ')' : ''),
        el('td', {}, e.dataset.drifted_features + ' of ' + e.dataset.features + ' (' + fmt(100 * e.dataset.share, 0) + ' %)'),
        el('td', {}, String(e.rows)),
        el('td', {}, clock(e.evaluated_ms)),
        el('td', {}, worst || '–'),
        el('td', {}, el('button', { type: 'button', class: 'show-version', onclick: () => {
          registry.version = x.version;
          registry.feature = null;
          refreshRegistry(true);
        } }, 'Features')));
    });
    return el('table', { class: 'drift-versions' }, el('thead', {}, head), el('tbody', {}, body));
  }

  function driftFeaturesTable(chosen) {
    const latest = chosen.evaluations[0];
    const entries = Object.entries(latest.features).sort(([a, x], [b, y]) =>
      (Number(!!y.drifted) - Number(!!x.drifted)) || a.localeCompare(b, undefined, { numeric: true }));
    const head = el('tr', {}, ['feature', 'statistic', 'value', 'compared', 'bound', 'verdict', '']
      .map((h) => el('th', { scope: 'col' }, h)));
    const body = entries.map(([name, v]) => {
      if (v.no_verdict !== undefined) {
        return el('tr', { 'data-feature': name }, el('td', {}, name), el('td', { colspan: 6, class: 'hint' }, v.no_verdict));
      }
      return el('tr', { 'data-feature': name, class: (v.drifted ? 'drifted' : 'steady') + (name === registry.feature ? ' chosen' : '') },
        el('td', {}, name),
        el('td', {}, v.stat),
        el('td', {}, fmt(v.value, 4)),
        el('td', {}, isTest(v) ? 'p ' + fmt(v.p_value, 4) : 'distance'),
        el('td', {}, (isTest(v) ? 'p < ' : '≥ ') + fmt(v.threshold, 3)),
        el('td', { class: v.drifted ? 'error' : 'ok' }, v.drifted ? 'drifted' : 'no drift'),
        el('td', {}, el('button', { type: 'button', class: 'show-feature', onclick: () => {
          registry.feature = name;
          refreshRegistry(true);
        } }, 'Draw')));
    });
    return el('table', { class: 'drift-features' },
      el('caption', {}, 'Version ' + chosen.version + ', evaluated at ' + clock(latest.evaluated_ms) + ' over ' +
        latest.rows + ' rows (reference: ' + latest.reference_rows + ' rows, ' + latest.reference_source + ')'),
      el('thead', {}, head), el('tbody', {}, body));
  }

  function driftChartWidth() {
    const width = $('drift-charts').clientWidth || 600;
    return Math.max(260, Math.min(640, Math.floor(width / (width >= 720 ? 2 : 1)) - 12));
  }

  // The chosen feature's statistic (the p-value for tests) over time, with its bound.
  function drawDriftHistory(chosen) {
    const feature = registry.feature;
    const points = [...chosen.evaluations].reverse().map((e) => [e.evaluated_ms / 1000, e.features[feature]])
      .filter(([, v]) => v && v.no_verdict === undefined);
    if (!points.length || !hasCharts()) return;
    const test = isTest(points[points.length - 1][1]);
    const holder = el('div', { class: 'chart drift-history', 'data-feature': feature });
    $('drift-charts').append(holder);
    const data = [points.map(([t]) => t), points.map(([, v]) => score(v)), points.map(([, v]) => v.threshold)];
    const options = {
      title: feature + ' of v' + chosen.version + ': ' + (test ? 'p-value (drifts below α)' : points[0][1].stat + ' (drifts at the bound)'),
      width: driftChartWidth(),
      height: 180,
      // From 0, so the bound is never the chart's bottom edge.
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      axes: [{ size: 30 }, { size: 50 }],
      series: [{}, { label: test ? 'p-value' : 'statistic', stroke: COLORS[0], width: 1.5, points: { show: true } },
        { label: test ? 'α' : 'bound', stroke: COLORS[1], width: 1, dash: [6, 4] }],
    };
    const plot = new window.uPlot(options, data, holder);
    // At least the last minute on the time axis: a first point alone would span years.
    const times = data[0];
    plot.setScale('x', { min: Math.min(times[0], times[times.length - 1] - 60), max: times[times.length - 1] });
    registry.plots.push(plot);
  }

  // Bins (or categories) of a distribution answer, with the reference's and the current share.
  function distributionRows(shown) {
    const share = (counts) => {
      const total = counts.reduce((a, b) => a + b, 0);
      return counts.map((c) => (total > 0 ? c / total : 0));
    };
    const ref = shown.reference;
    const cur = shown.current;
    if (ref.kind === 'numeric') {
      const edges = ref.edges;
      const labels = ref.counts.map((_, i) => (i === 0 ? '< ' + fmt(edges[0], 2)
        : i === edges.length ? '≥ ' + fmt(edges[i - 1], 2) : fmt(edges[i - 1], 2) + '…' + fmt(edges[i], 2)));
      // The axis names each bin by its lower edge; the legend and the table give the range.
      const ticks = ref.counts.map((_, i) => (i === 0 ? '<' + fmt(edges[0], 1) : fmt(edges[i - 1], 1)));
      return { labels, ticks, reference: share(ref.counts), current: cur ? share(cur.counts) : null };
    }
    const names = ref.counts.map(([name]) => name);
    const of = (side) => {
      const map = new Map(side.counts);
      return share([...names.map((n) => map.get(n) || 0), side.other + side.counts.filter(([n]) => !names.includes(n))
        .reduce((a, [, c]) => a + c, 0)]);
    };
    const labels = [...names, 'other'];
    return { labels, ticks: labels, reference: of(ref), current: cur ? of(cur) : null };
  }

  function drawDistribution(shown) {
    const rows = distributionRows(shown);
    const caption = shown.feature + ' of v' + shown.version + ': reference (' + shown.reference.rows + ' rows) vs the last ' +
      shown.span_seconds + ' s (' + (shown.current ? shown.current.rows + ' rows' : 'no traffic') + ')';
    if (hasCharts() && rows.current) {
      const holder = el('div', { class: 'chart drift-distribution', 'data-feature': shown.feature });
      $('drift-charts').append(holder);
      const x = rows.labels.map((_, i) => i);
      const bars = window.uPlot.paths && window.uPlot.paths.bars;
      const series = (label, color, align) => ({
        label, stroke: color, fill: color + '66', width: 1,
        paths: bars ? bars({ size: [0.4, 40], align }) : undefined,
        points: { show: false },
      });
      const options = {
        title: caption,
        width: driftChartWidth(),
        height: 180,
        scales: { x: { time: false, range: [-0.6, x.length - 0.4] }, y: { range: [0, null] } },
        axes: [{ size: 40, space: 34, values: (u, splits) => splits.map((i) => rows.ticks[i] ?? '') }, { size: 44 }],
        series: [{ label: 'bin', value: (u, i) => (i === null ? '–' : rows.labels[i] ?? '') },
          series('reference', COLORS[0], -1), series('current', COLORS[1], 1)],
      };
      registry.plots.push(new window.uPlot(options, [x, rows.reference, rows.current], holder));
    }
    const table = el('table', { class: 'distribution' },
      el('caption', {}, caption),
      el('thead', {}, el('tr', {}, ['bin', 'reference %', 'current %'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows.labels.map((label, i) => el('tr', {},
        el('td', {}, label), el('td', {}, fmt(100 * rows.reference[i], 1)),
        el('td', {}, rows.current ? fmt(100 * rows.current[i], 1) : '–')))));
    $('drift-charts').append(el('details', { class: 'distribution-numbers', open: !hasCharts() },
      el('summary', {}, 'Numbers'), el('div', { class: 'table-wrap' }, table)));
  }

  function renderAliasHistory(history) {
    const version = (v) => (v === null || v === undefined ? null : 'v' + v);
    const head = el('tr', {}, ['time', 'alias', 'move', 'who', 'why', 'generation'].map((h) => el('th', { scope: 'col' }, h)));
    const body = [...history].reverse().slice(0, 200).map((c) => el('tr', { 'data-alias': c.alias },
      el('td', {}, new Date(c.at_ms).toLocaleString()),
      el('td', {}, '@' + c.alias),
      el('td', {}, (version(c.from_version) || 'created') + ' → ' + (version(c.to_version) || 'deleted')),
      el('td', {}, c.actor),
      el('td', { class: 'note' }, c.reason || '–'),
      el('td', {}, String(c.generation))));
    $('alias-history').replaceChildren(history.length
      ? el('table', { class: 'alias-history' }, el('thead', {}, head), el('tbody', {}, body))
      : el('p', { class: 'hint' }, 'No alias of ' + registry.selected + ' was ever set.'));
  }

  // === Start ===

  let timer = null;
  async function tick() {
    clearTimeout(timer);
    await refresh();
    timer = setTimeout(tick, POLL_MS);
  }

  function start() {
    $('charts-off').hidden = hasCharts();
    $('login').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token').value.trim();
      $('token').value = '';
      if (!value) return;
      token.set(value);
      setStatus('loading', 'reading…');
      tick();
    });
    $('forget-token').addEventListener('click', () => {
      destroyDriftCharts();
      for (const card of cards.values()) destroyCharts(card);
      cards.clear();
      $('models').replaceChildren();
      askForToken();
    });
    $('filter').addEventListener('input', render);
    $('registry-model').addEventListener('change', () => {
      registry.selected = $('registry-model').value || null;
      registry.version = null;
      registry.feature = null;
      refreshRegistry(true);
    });
    let resizing = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizing);
      resizing = setTimeout(resizeCharts, 200);
    });
    if (token.get()) {
      setStatus('loading', 'reading…');
    } else {
      askForToken();
    }
    tick();
  }

  start();
})();
