// modelfetch dashboard: one EventSource keeps the page live; the page never polls.
//
// A `snapshot` event replaces everything; on a long list it carries the first page and
// `snapshot_page` events bring the rest (until one has `next: null`). Events that arrive before
// the last page are held and applied after it, in order. Progress events update bars in place.
// Events that
// change a download's shape or state (queued, status changed, finished, reordered) make the page
// fetch that one download's view once, so the page never re-derives the engine's rules.
'use strict';

(() => {
  const SECTIONS = ['active', 'queued', 'paused', 'failed', 'done'];
  const SECTION_OF = {
    active: 'active',
    queued: 'queued',
    paused: 'paused',
    failed: 'failed',
    partial: 'failed',
    completed: 'done',
    cancelled: 'done',
  };
  const STRUCTURAL = [
    'group_queued', 'file_started', 'status_changed', 'file_completed', 'file_failed',
    'cancelled', 'group_finished',
  ];
  const UNKNOWN = '\u2014';

  const state = {
    groups: new Map(), // id -> GroupView (as the API returns it)
    skew: 0, // server clock minus ours, in seconds (from event timestamps)
    cards: new Map(), // id -> card element
    pending: new Set(), // group ids to re-fetch
    refreshAll: false,
    refreshQueued: false, // positions shift whenever something joins or leaves the line
    renderQueued: false,
    held: null, // while a paged snapshot arrives: the events to apply after its last page
  };

  // ---------------------------------------------------------------- formatting (core/format.py)

  function formatBytes(n) {
    if (n === null || n === undefined || n < 0) return UNKNOWN;
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
    let value = n;
    for (let i = 0; i < units.length; i += 1) {
      value /= 1024;
      if (Math.round(value * 10) / 10 < 1024 || i === units.length - 1) {
        return `${value.toFixed(1)} ${units[i]}`;
      }
    }
    return UNKNOWN;
  }

  function formatRate(bps) {
    if (bps === null || bps === undefined || !Number.isFinite(bps) || bps < 0) return UNKNOWN;
    if (bps >= 1e9) return `${(bps / 1e9).toFixed(2)} GB/s`;
    if (bps >= 1e6) return `${(bps / 1e6).toFixed(1)} MB/s`;
    if (bps >= 1e3) return `${(bps / 1e3).toFixed(0)} kB/s`;
    return `${bps.toFixed(0)} B/s`;
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
      return UNKNOWN;
    }
    const total = seconds >= 359999 ? 359999 : Math.max(1, Math.ceil(seconds));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const pad = (x) => String(x).padStart(2, '0');
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s)}s`;
    return `${s}s`;
  }

  function serverNow() {
    return Date.now() / 1000 + state.skew;
  }

  function percent(done, total) {
    if (!total || total <= 0) return null;
    return Math.max(0, Math.min(100, (100 * done) / total));
  }

  // ------------------------------------------------------------------------ state in words

  function fileWords(f) {
    switch (f.status) {
      case 'queued':
        return f.position ? `queued #${f.position}` : 'queued';
      case 'active':
        return activeWords(f.speed, f.eta, f.idle_for);
      case 'waiting_retry':
        return `${retryWords(f)}: ${f.error_message || f.error_kind || 'error'}`;
      case 'paused':
        if (f.pause_reason === 'disk_full') return 'paused: disk full';
        if (f.pause_reason && f.pause_reason !== 'user') return `paused: ${f.pause_reason.replace('_', ' ')}`;
        return 'paused';
      case 'failed':
        return `failed: ${f.error_message || f.error_kind || 'error'}`;
      case 'completed':
        return 'done';
      case 'cancelled':
        return 'cancelled';
      default:
        return f.status;
    }
  }

  function retryWords(f) {
    const left = f.retry_at ? Math.max(0, f.retry_at - serverNow()) : null;
    return left === null ? 'retrying soon' : `retrying in ${formatDuration(left)}`;
  }

  // The error behind a group's state, shown under its bar (the state itself stays short).
  function groupDetail(g) {
    if (g.status === 'completed' || g.status === 'cancelled') return '';
    const files = g.files || [];
    const bad = files.find((f) => f.status === 'waiting_retry' || f.status === 'failed');
    if (!bad || !bad.error_message) return '';
    const prefix = files.length > 1 ? `${bad.name}: ` : '';
    return `${prefix}${bad.error_message}`;
  }

  function activeWords(speed, eta, idleFor) {
    if (speed === 0 || (idleFor !== null && idleFor !== undefined && idleFor >= 5)) {
      return 'stalled: no data';
    }
    if (speed === null || speed === undefined) return 'starting\u2026';
    return `${formatRate(speed)} \u00b7 ${formatDuration(eta)} left`;
  }

  function groupWords(g) {
    const files = g.files || [];
    const retrying = files.find((f) => f.status === 'waiting_retry');
    switch (g.status) {
      case 'active':
        return activeWords(g.speed, g.eta, null);
      case 'queued':
        if (retrying) return retryWords(retrying);
        return g.position ? `queued #${g.position}` : 'queued';
      case 'paused': {
        const disk = files.some((f) => f.pause_reason === 'disk_full');
        return disk ? 'paused: disk full' : 'paused';
      }
      case 'failed':
        return 'failed';
      case 'partial': {
        const failed = files.filter((f) => f.status === 'failed').length;
        const cancelled = files.filter((f) => f.status === 'cancelled').length;
        const parts = [];
        if (failed) parts.push(`${failed} failed`);
        if (cancelled) parts.push(`${cancelled} cancelled`);
        return `partly done: ${parts.join(', ')}`;
      }
      case 'completed':
        return 'done';
      case 'cancelled':
        return 'cancelled';
      default:
        return g.status;
    }
  }

  // ------------------------------------------------------------------------------- the API

  async function api(method, path, body) {
    const options = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
    if (method !== 'GET') {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body || {});
    }
    const response = await fetch(path, options);
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const error = new Error((data && data.error && data.error.message) || response.statusText);
      error.status = response.status;
      error.kind = data && data.error ? data.error.kind : null;
      error.details = data ? data.error : null;
      throw error;
    }
    return data === null ? {} : data;
  }

  function toast(text, level) {
    const box = document.getElementById('toasts');
    const item = el('div', { className: `toast toast-${level || 'info'}` }, text);
    box.appendChild(item);
    setTimeout(() => item.remove(), 6000);
  }

  async function act(promise, what) {
    try {
      return await promise;
    } catch (error) {
      toast(`${what}: ${error.message}`, 'error');
      return null;
    }
  }

  // ----------------------------------------------------------------------------- rendering

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (key === 'dataset') Object.assign(node.dataset, value);
        else if (key.startsWith('aria-') || key === 'role' || key === 'title') node.setAttribute(key, value);
        else node[key] = value;
      }
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Text with its http(s) URLs as links (a gated repo's error names the page to accept its
  // terms on); the rest stays text nodes, so nothing in a message is ever parsed as HTML.
  function linked(text) {
    const out = [];
    let last = 0;
    for (const match of text.matchAll(/https?:\/\/[^\s,;)]+[^\s,;).]/g)) {
      if (match.index > last) out.push(text.slice(last, match.index));
      out.push(el('a', { href: match[0], target: '_blank', rel: 'noopener' }, match[0]));
      last = match.index + match[0].length;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setBar(bar, done, total, status) {
    const fill = bar.firstChild;
    const pct = percent(done, total);
    bar.classList.toggle('bar-unknown', pct === null && status === 'active');
    const width = pct === null ? (status === 'completed' ? '100%' : '0%') : `${pct.toFixed(1)}%`;
    if (fill.style.width !== width) fill.style.width = width;
    bar.setAttribute('aria-valuenow', pct === null ? '' : pct.toFixed(1));
    bar.dataset.status = status;
  }

  function makeBar(label) {
    return el(
      'div',
      { className: 'bar', role: 'progressbar', 'aria-label': label, 'aria-valuemin': '0', 'aria-valuemax': '100' },
      el('div', { className: 'bar-fill' }),
    );
  }

  function actionsFor(g) {
    const s = g.status;
    const list = [];
    if (s === 'queued') list.push(['up', '\u2191', 'Move up'], ['down', '\u2193', 'Move down']);
    if (s === 'active' || s === 'queued') list.push(['pause', 'Pause']);
    if (s === 'paused') list.push(['resume', 'Resume']);
    if (s === 'failed' || s === 'partial' || s === 'cancelled') list.push(['retry', 'Retry']);
    if (s === 'active' || s === 'queued' || s === 'paused') list.push(['cancel', 'Cancel']);
    if (SECTION_OF[s] === 'done' || s === 'failed' || s === 'partial') list.push(['forget', 'Remove']);
    return list;
  }

  function renderActions(box, g) {
    const list = actionsFor(g);
    const key = `${g.status}:${g.position}:${list.map((a) => a[0]).join(',')}`;
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    box.replaceChildren(
      ...list.map(([action, text, title]) => el(
        'button',
        {
          type: 'button',
          className: `btn btn-small${action === 'cancel' || action === 'forget' ? ' btn-quiet' : ''}${action === 'up' || action === 'down' ? ' btn-icon' : ''}`,
          dataset: { action, id: String(g.id) },
          title: title || `${text} ${g.name}`,
          'aria-label': `${title || text} ${g.name}`,
          disabled: (action === 'up' && g.position === 1),
        },
        text,
      )),
    );
  }

  function fileRow(f) {
    return el(
      'li',
      { className: 'file', dataset: { ref: f.ref } },
      el('span', { className: 'file-name', title: f.dest }),
      makeBar(`progress of ${f.name}`),
      el('span', { className: 'file-bytes' }),
      el(
        'span',
        { className: 'file-state' },
        el('span', { className: 'file-words' }),
        el('span', { className: 'file-worker', hidden: true }),
      ),
    );
  }

  function updateFile(row, f) {
    const [name, bar, bytes, stateBox] = row.children;
    const [words, worker] = stateBox.children;
    setText(name, f.name);
    name.title = f.dest;
    setBar(bar, f.downloaded, f.total, f.status);
    setText(bytes, `${formatBytes(f.downloaded)} / ${formatBytes(f.total)}`);
    const said = fileWords(f);
    setText(words, said);
    // On a queue shared by workers: the host running an active file (its full id on hover).
    // A status event may say a file left `active` before its view is fetched again.
    const held = f.status === 'active' && f.worker ? f.worker : null;
    const on = held ? `on ${held.split('/')[0]}` : '';
    setText(worker, on);
    worker.hidden = !held;
    worker.title = held ? `held by worker ${held}` : '';
    stateBox.title = held ? `${said} ${on}` : said;
    row.dataset.status = f.status;
  }

  function makeCard(g) {
    const card = el(
      'article',
      { className: 'card', dataset: { id: String(g.id) } },
      el(
        'div',
        { className: 'card-head' },
        el('div', { className: 'title' }, el('span', { className: 'name' }), el('span', { className: 'spec' })),
        el('span', { className: 'state' }),
        el('div', { className: 'actions' }),
      ),
      makeBar(`progress of ${g.name}`),
      el('div', { className: 'meta' }),
      el('div', { className: 'detail' }),
      el('ul', { className: 'files' }),
    );
    return card;
  }

  function updateCard(card, g) {
    const name = card.querySelector('.name');
    const spec = card.querySelector('.spec');
    setText(name, g.name);
    setText(spec, g.spec !== g.name ? g.spec : '');
    name.title = g.dest_dir;
    const words = card.querySelector('.state');
    setText(words, groupWords(g));
    const retrying = g.status === 'queued' && (g.files || []).some((f) => f.status === 'waiting_retry');
    words.dataset.status = retrying ? 'waiting_retry' : g.status;
    card.dataset.status = g.status;
    setBar(card.querySelector(':scope > .bar'), g.downloaded, g.total, g.status);
    const files = g.files || [];
    const doneFiles = files.filter((f) => f.status === 'completed').length;
    const parts = [`${formatBytes(g.downloaded)} / ${formatBytes(g.total)}`];
    const pct = percent(g.downloaded, g.total);
    if (pct !== null) parts.push(`${pct.toFixed(pct >= 100 ? 0 : 1)}%`);
    if (g.status === 'active') parts.push(formatRate(g.speed), `ETA ${formatDuration(g.eta)}`);
    parts.push(files.length === 1 ? '1 file' : `${doneFiles}/${files.length} files`);
    setText(card.querySelector('.meta'), parts.join('  \u00b7  '));
    renderActions(card.querySelector('.actions'), g);
    const detail = card.querySelector('.detail');
    const why = groupDetail(g);
    setText(detail, why);
    detail.title = why;
    detail.hidden = !why;

    const list = card.querySelector('.files');
    const rows = new Map([...list.children].map((row) => [row.dataset.ref, row]));
    files.forEach((f, i) => {
      let row = rows.get(f.ref);
      if (!row) row = fileRow(f);
      rows.delete(f.ref);
      updateFile(row, f);
      if (list.children[i] !== row) list.insertBefore(row, list.children[i] || null);
    });
    for (const stale of rows.values()) stale.remove();
  }

  function order(section, a, b) {
    if (section === 'queued') return (a.position || 1e9) - (b.position || 1e9) || a.id - b.id;
    if (section === 'done' || section === 'failed') {
      return (b.finished_at || 0) - (a.finished_at || 0) || b.id - a.id;
    }
    return a.id - b.id;
  }

  function render() {
    state.renderQueued = false;
    const buckets = Object.fromEntries(SECTIONS.map((s) => [s, []]));
    for (const g of state.groups.values()) buckets[SECTION_OF[g.status] || 'queued'].push(g);
    for (const [id, card] of state.cards) {
      if (!state.groups.has(id)) {
        card.remove();
        state.cards.delete(id);
      }
    }
    let speed = null;
    let active = 0;
    for (const section of SECTIONS) {
      const box = document.querySelector(`section[data-section="${section}"]`);
      const cards = box.querySelector('.cards');
      const groups = buckets[section].sort((a, b) => order(section, a, b));
      groups.forEach((g, i) => {
        let card = state.cards.get(g.id);
        if (!card) {
          card = makeCard(g);
          state.cards.set(g.id, card);
        }
        updateCard(card, g);
        if (cards.children[i] !== card) cards.insertBefore(card, cards.children[i] || null);
        if (g.status === 'active') {
          active += 1;
          if (g.speed !== null && g.speed !== undefined) speed = (speed || 0) + g.speed;
        }
      });
      box.hidden = groups.length === 0;
      setText(box.querySelector('.count'), String(groups.length));
    }
    document.getElementById('empty').hidden = state.groups.size !== 0;
    const totals = document.getElementById('totals');
    const rate = speed === null ? '' : ` \u00b7 ${formatRate(speed)}`;
    // What the Hub mirror holds: its pulled files are downloads whose spec says so.
    let held = 0;
    let heldBytes = 0;
    for (const g of state.groups.values()) {
      if (g.status === 'completed' && typeof g.spec === 'string' && g.spec.startsWith('mirror ')) {
        held += 1;
        heldBytes += g.total || g.downloaded || 0;
      }
    }
    const mirror = held ? `mirror holds ${held} file${held === 1 ? '' : 's'}, ${formatBytes(heldBytes)}` : '';
    const moving = active ? `${active} active${rate}` : '';
    setText(totals, [moving, mirror].filter(Boolean).join(' \u00b7 '));
  }

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(render);
  }

  // --------------------------------------------------------------------------- live events

  function noteTime(ts) {
    if (typeof ts === 'number') state.skew = ts - Date.now() / 1000;
  }

  function findFile(ref) {
    const gid = Number(String(ref).split('.')[0]);
    const g = state.groups.get(gid);
    if (!g) return [null, null];
    return [g, (g.files || []).find((f) => f.ref === ref) || null];
  }

  let refreshTimer = null;
  function scheduleRefresh(groupId) {
    if (groupId === null) state.refreshAll = true;
    else state.pending.add(groupId);
    state.refreshQueued = true;
    if (refreshTimer) return;
    // Coalesce a burst (pause-all of fifty files) into one request per download.
    refreshTimer = setTimeout(runRefresh, 80);
  }

  // Every download the list answers, page by page (it sends `next` while more may follow).
  async function listAll(query) {
    const found = [];
    let after = null;
    for (;;) {
      const params = [query, after === null ? '' : `after=${after}`].filter(Boolean).join('&');
      const data = await api('GET', `/api/downloads${params ? `?${params}` : ''}`);
      found.push(...data.downloads);
      if (data.next === null || data.next === undefined) return found;
      after = data.next;
    }
  }

  async function runRefresh() {
    refreshTimer = null;
    const all = state.refreshAll;
    const queued = state.refreshQueued;
    const ids = [...state.pending];
    state.refreshAll = false;
    state.refreshQueued = false;
    state.pending.clear();
    try {
      if (all) {
        state.groups = new Map((await listAll('')).map((g) => [g.id, g]));
      } else {
        const waiting = queued ? listAll('status=queued') : null;
        await Promise.all(ids.map(async (id) => {
          try {
            state.groups.set(id, await api('GET', `/api/downloads/${id}`));
          } catch (error) {
            if (error.status === 404) state.groups.delete(id);
            else throw error;
          }
        }));
        if (waiting) {
          for (const g of await waiting) state.groups.set(g.id, g);
        }
      }
    } catch (error) {
      toast(`could not refresh: ${error.message}`, 'error');
    }
    scheduleRender();
  }

  function setConnection(text, kind) {
    const pill = document.getElementById('connection');
    setText(pill, text);
    pill.className = `pill pill-${kind}`;
  }

  function connect() {
    const source = new EventSource('/api/events');
    source.onopen = () => setConnection('live', 'live');
    source.onerror = () => {
      // EventSource reconnects by itself, sending Last-Event-ID.
      setConnection(source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting\u2026', 'wait');
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    };
    const on = (type, fn) => source.addEventListener(type, (message) => {
      const data = JSON.parse(message.data);
      noteTime(data.ts);
      // Not before the snapshot is whole: an event would land on a download whose page has
      // not come yet, and then be overwritten by that (older) page.
      if (state.held) state.held.push(() => fn(data));
      else fn(data);
    });
    // The list may come in pages: shown as they arrive, the events held until the last one.
    const snapshotPart = (data) => {
      for (const g of data.items) state.groups.set(g.id, g);
      scheduleRender();
      if (data.next !== null && data.next !== undefined) return;
      const held = state.held || [];
      state.held = null;
      setConnection('live', 'live');
      for (const apply of held) apply();
    };
    source.addEventListener('snapshot', (message) => {
      const data = JSON.parse(message.data);
      noteTime(data.ts);
      // A fresh start: whatever an earlier (or half-received) snapshot held is replaced.
      state.groups = new Map();
      state.held = [];
      snapshotPart(data);
    });
    source.addEventListener('snapshot_page', (message) => {
      if (!state.held) return; // a page without its snapshot (cannot happen; ignored)
      snapshotPart(JSON.parse(message.data));
    });
    on('file_progress', (e) => {
      const [, f] = findFile(e.ref);
      if (!f) return;
      f.downloaded = e.downloaded;
      f.total = e.total;
      f.speed = e.speed === undefined ? null : e.speed;
      f.eta = e.eta === undefined ? null : e.eta;
      f.status = 'active';
      f.idle_for = null;
      scheduleRender();
    });
    on('group_progress', (e) => {
      const g = state.groups.get(e.group_id);
      if (!g) return;
      g.downloaded = e.downloaded;
      g.total = e.total;
      g.speed = e.speed === undefined ? null : e.speed;
      g.eta = e.eta === undefined ? null : e.eta;
      scheduleRender();
    });
    for (const type of STRUCTURAL) {
      on(type, (e) => {
        if (type === 'status_changed') {
          const [, f] = findFile(e.ref);
          if (f) {
            f.status = e.status;
            f.retry_at = e.retry_at === undefined ? null : e.retry_at;
            f.error_message = e.error_message === undefined ? f.error_message : e.error_message;
          }
          scheduleRender();
        }
        scheduleRefresh(e.group_id);
      });
    }
    on('queue_changed', () => scheduleRefresh(null));
    on('notice', (e) => toast(e.message, e.level === 'error' ? 'error' : 'info'));
    on('missed', () => setConnection('catching up\u2026', 'wait'));
  }

  // -------------------------------------------------------------------------- user actions

  async function onCardClick(event) {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const id = Number(button.dataset.id);
    const g = state.groups.get(id);
    const action = button.dataset.action;
    button.disabled = true;
    try {
      if (action === 'up' || action === 'down') {
        const position = Math.max(1, (g && g.position ? g.position : 1) + (action === 'up' ? -1 : 1));
        await act(api('POST', `/api/downloads/${id}/move`, { position }), 'move');
      } else if (action === 'forget') {
        const ok = await act(api('DELETE', `/api/downloads/${id}`), 'remove');
        if (ok !== null) {
          state.groups.delete(id);
          scheduleRender();
        }
      } else {
        const view = await act(api('POST', `/api/downloads/${id}/${action}`), action);
        if (view) {
          state.groups.set(view.id, view);
          scheduleRender();
        }
      }
    } finally {
      button.disabled = false;
    }
  }

  async function onAdd(event) {
    event.preventDefault();
    const spec = document.getElementById('add-spec');
    const quant = document.getElementById('add-quant');
    const message = document.getElementById('add-message');
    const button = document.getElementById('add-button');
    const body = { spec: spec.value.trim() };
    if (quant.value.trim()) body.quant = quant.value.trim();
    button.disabled = true;
    setText(button, 'Adding\u2026');
    message.hidden = true;
    try {
      const view = await api('POST', '/api/downloads', body);
      state.groups.set(view.id, view);
      scheduleRender();
      spec.value = '';
      quant.value = '';
      message.className = 'message ok';
      setText(message, `Added ${view.name}`);
      message.hidden = false;
      setTimeout(() => { message.hidden = true; }, 4000);
    } catch (error) {
      message.className = 'message error';
      // The accepted forms only help when the spec itself was not understood; a gated repo,
      // a refused token or an unusable folder is said in its own line, with its links.
      const forms = error.kind === 'spec' && error.details && error.details.accepted_forms;
      const parts = [el('strong', null, ...linked(error.message.split('\n')[0]))];
      // replaceChildren would write a missing <pre> as the text "null": pass only real nodes.
      if (forms) parts.push(el('pre', null, forms));
      message.replaceChildren(...parts);
      message.hidden = false;
    } finally {
      button.disabled = false;
      setText(button, 'Add download');
    }
  }

  function showLimits(limits, note, level) {
    const maxActive = document.getElementById('max-active');
    if (document.activeElement !== maxActive) maxActive.value = limits.max_active;
    const rate = document.getElementById('rate-limit');
    if (document.activeElement !== rate) {
      rate.value = limits.rate_limit ? String(Math.round(limits.rate_limit / 1e5) / 10) : '';
    }
    const message = document.getElementById('limits-message');
    if (note) {
      message.className = `message ${level || 'subtle'}`;
      setText(message, note);
      message.hidden = false;
    }
  }

  async function setLimits(body, describe) {
    const message = document.getElementById('limits-message');
    try {
      const limits = await api('PUT', '/api/limits', body);
      showLimits(limits, describe(limits), 'ok');
    } catch (error) {
      // Whatever the daemon answered (out of range, not supported), shown as it said it.
      message.className = 'message error';
      setText(message, `Not applied: ${error.message}`);
      message.hidden = false;
    }
  }

  function onMaxActive(event) {
    event.preventDefault();
    const value = Number(document.getElementById('max-active').value);
    setLimits({ max_active: value }, (l) => `Up to ${l.max_active} file${l.max_active === 1 ? '' : 's'} at once.`);
  }

  function onRateLimit(event) {
    event.preventDefault();
    const raw = document.getElementById('rate-limit').value.trim();
    const mbps = raw === '' ? 0 : Number(raw);
    setLimits(
      { rate_limit: Math.round(mbps * 1e6) },
      (l) => (l.rate_limit ? `Speed limit: ${formatRate(l.rate_limit)} over all downloads.` : 'No speed limit.'),
    );
  }

  async function loadLimits() {
    const limits = await act(api('GET', '/api/limits'), 'limits');
    if (limits) showLimits(limits);
  }

  function tick() {
    // Countdowns ("retrying in 12 s") move with the clock, not with the server.
    for (const g of state.groups.values()) {
      if ((g.files || []).some((f) => f.status === 'waiting_retry')) {
        scheduleRender();
        return;
      }
    }
  }

  function start() {
    document.querySelector('main').addEventListener('click', onCardClick);
    document.getElementById('add-form').addEventListener('submit', onAdd);
    document.getElementById('max-active-form').addEventListener('submit', onMaxActive);
    document.getElementById('rate-limit-form').addEventListener('submit', onRateLimit);
    document.getElementById('pause-all').addEventListener('click', () => act(api('POST', '/api/pause-all'), 'pause all'));
    document.getElementById('resume-all').addEventListener('click', () => act(api('POST', '/api/resume-all'), 'resume all'));
    document.getElementById('forget-finished').addEventListener('click', async () => {
      const data = await act(api('POST', '/api/forget-finished'), 'clear finished');
      if (data) {
        for (const id of data.forgotten) state.groups.delete(id);
        scheduleRender();
      }
    });
    loadLimits();
    connect();
    setInterval(tick, 1000);
    render();
  }

  start();
})();
