// app.js: the episoded dashboard. It polls the /v1 API, computes rates
// from successive counter samples, and drives episodes and WHEP previews.
// No framework: keyed rows are created once and updated in place, so a
// button is never replaced under the pointer and typed text survives polls.

import {
  AuthError, ForbiddenError, HTTPError, download, getJSON, getToken, pathOf, send, setToken,
} from './api.js';
import {
  fmtBitrate, fmtBytes, fmtDate, fmtDuration, fmtMs, fmtRate, fmtTimeNs, h, pick, pill, plural,
  replaceRows, shortID, stateKind,
} from './ui.js';
import { WHEPViewer } from './whep.js';

const STATUS_EVERY_MS = 1000;
const LIST_EVERY_MS = 3000;
const RATE_WINDOW = 5; // counter samples kept per stream (about 4 s)
const MAX_EPISODES = 20;

const $ = (sel) => document.querySelector(sel);

const state = {
  history: new Map(), // stream -> [{t, samples, bytes, dropped, lost, gaps}]
  lastChange: new Map(), // stream -> client time its sample count last grew
  streamRows: new Map(),
  deviceRows: new Map(),
  cellCards: new Map(),
  episodeRows: new Map(),
  selected: null, // episode id shown in the detail panel
  selectedState: null,
  previews: new Map(), // stream -> {viewer, tile}
  recording: new Map(), // cell -> recording episode or null
};

// ---- messages -------------------------------------------------------------

function showError(msg) {
  const el = $('#error');
  if (!msg) {
    el.hidden = true;
    return;
  }
  el.replaceChildren(h('span', {}, msg), h('button', { class: 'link', type: 'button', onclick: () => showError(null) }, 'dismiss'));
  el.hidden = false;
}

function showAuthPrompt(what) {
  const el = $('#auth-prompt');
  $('#auth-prompt-text').textContent =
    (what ? what + ': the daemon answered 401 (missing or wrong token). ' : '') +
    "Everything on this page needs a token set in the daemon's config: api.read_token to watch, api.token to start and stop episodes.";
  const wasHidden = el.hidden;
  el.hidden = false;
  if (wasHidden) $('#token').focus();
}

// report shows a failed action: a prompt for 401, a banner otherwise.
function report(what, err) {
  if (err instanceof AuthError) showAuthPrompt(what);
  else if (err instanceof ForbiddenError) showError(`${what}: refused (403): this token is read-only; starting, stopping, deleting and retrying need the admin token (api.token).`);
  else showError(`${what}: ${err.message}`);
}

function actionDone() {
  $('#auth-prompt').hidden = true;
}

// exportLink is a link to an episode's MCAP. A plain link cannot send the
// token, so a click fetches the file with it and saves it.
function exportLink(id, cls, text, hidden) {
  const path = `/v1/episodes/${pathOf(id)}/export`;
  return h('a', {
    class: cls,
    href: path,
    download: `${id}.mcap`,
    hidden: !!hidden,
    onclick: async (ev) => {
      ev.preventDefault();
      try {
        await download(path, `${id}.mcap`);
      } catch (err) {
        report('Export ' + shortID(id), err);
      }
    },
  }, text);
}

// ---- polling --------------------------------------------------------------

// every runs fn now and then ms after each run ends (no overlap). It
// returns a function that runs fn again at once.
function every(ms, fn) {
  let timer = null;
  let running = false;
  let again = false;
  async function tick() {
    clearTimeout(timer);
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
    } finally {
      running = false;
      timer = setTimeout(tick, again ? 0 : ms);
      again = false;
    }
  }
  tick();
  return tick;
}

function setConn(ok, text) {
  const el = $('#conn');
  el.textContent = text;
  el.className = 'pill ' + (ok ? 'good' : 'bad');
}

async function pollStatus() {
  let st;
  try {
    st = await getJSON('/v1/status');
  } catch (err) {
    if (err instanceof AuthError) {
      setConn(false, 'token needed');
      showAuthPrompt(getToken() ? 'Status' : '');
    } else {
      setConn(false, 'daemon unreachable');
    }
    $('#conn').title = err.message;
    return;
  }
  setConn(st.ready !== false, st.ready === false ? 'starting' : 'connected');
  $('#conn').title = '';
  const gw = [st.site, st.gateway].filter(Boolean).join(' / ');
  $('#gateway').textContent = gw ? 'gateway ' + gw : '';
  $('#footer').textContent = `episoded ${st.version || ''}${st.commit && st.commit !== 'unknown' ? ' (' + st.commit + ')' : ''} · up ${fmtDuration(st.uptime_seconds)}`;
  renderCells(st.cells || []);
  renderStreams(st.streams || [], st.devices || []);
  renderDevices(st.devices || []);
  renderStorage(st.storage);
  renderWebRTC(st.webrtc);
}

let refreshEpisodes = () => {};
async function pollEpisodes() {
  let list;
  try {
    list = await getJSON('/v1/episodes');
  } catch (err) {
    // The status poll reports connectivity; show other failures here.
    if (err instanceof HTTPError) {
      state.episodeRows.clear();
      replaceRows($('#episodes tbody'), [], 'Episode list unavailable: ' + err.message, 10);
    }
    return;
  }
  renderEpisodes(Array.isArray(list) ? list.slice(0, MAX_EPISODES) : []);
  if (state.selected) {
    const e = list.find((x) => pick(x, 'ID') === state.selected);
    if (e && (pick(e, 'State') !== state.selectedState || pick(e, 'State') === 'recording')) await loadDetail(state.selected);
  }
}

let refreshUploads = () => {};
async function pollUploads() {
  try {
    renderUploads(await getJSON('/v1/uploads'));
  } catch (err) {
    $('#uploads').replaceChildren(h('p', { class: 'muted' }, 'Upload status unavailable: ' + err.message));
  }
}

// ---- cells and recording --------------------------------------------------

function cellCard(cell) {
  const statePill = pill('idle');
  const info = h('div', { class: 'cell-info' });
  const task = h('input', { type: 'text', placeholder: 'task (optional)', 'aria-label': 'task for ' + cell, class: 'task' });
  const start = h('button', { type: 'button', class: 'primary', dataset: { action: 'start', cell } }, 'Start episode');
  const stop = h('button', { type: 'button', class: 'danger', dataset: { action: 'stop', cell }, disabled: true }, 'Stop');
  start.addEventListener('click', async () => {
    start.disabled = true;
    try {
      const body = {};
      if (task.value.trim()) body.task = task.value.trim();
      const e = await send('POST', `/v1/cells/${pathOf(cell)}/episodes`, body);
      actionDone();
      state.recording.set(cell, e);
      showError(null);
    } catch (err) {
      report('Start episode in ' + cell, err);
    }
    refreshStatus();
    refreshEpisodes();
  });
  stop.addEventListener('click', async () => {
    const e = state.recording.get(cell);
    if (!e) return;
    stop.disabled = true;
    try {
      await send('POST', `/v1/episodes/${pathOf(pick(e, 'ID'))}/stop`);
      actionDone();
      showError(null);
    } catch (err) {
      report('Stop episode ' + shortID(pick(e, 'ID')), err);
    }
    refreshStatus();
    refreshEpisodes();
  });
  const root = h('div', { class: 'cell', dataset: { cell } },
    h('div', { class: 'cell-head' }, h('strong', {}, cell), statePill),
    info,
    h('div', { class: 'cell-controls' }, task, start, stop));
  return { root, statePill, info, start, stop };
}

function renderCells(cells) {
  const box = $('#cells');
  if (cells.length === 0) {
    box.replaceChildren(h('p', { class: 'muted' }, 'No cells configured.'));
    state.cellCards.clear();
    return;
  }
  const seen = new Set();
  const order = [];
  for (const c of cells) {
    const id = pick(c, 'Cell');
    seen.add(id);
    let card = state.cellCards.get(id);
    if (!card) {
      card = cellCard(id);
      state.cellCards.set(id, card);
    }
    order.push(card.root);
    const e = pick(c, 'Recording') || null;
    state.recording.set(id, e);
    const nStreams = (pick(c, 'Streams') || []).length;
    if (e) {
      const postroll = Number(pick(e, 'Stop')) !== 0;
      const elapsed = (Date.now() - Number(pick(e, 'Start')) / 1e6) / 1000;
      card.statePill.textContent = postroll ? 'post-roll' : 'recording';
      card.statePill.className = 'pill ' + (postroll ? 'info' : 'rec');
      const task = pick(e, 'Task');
      card.info.replaceChildren(
        h('span', { class: 'mono', title: pick(e, 'ID') }, shortID(pick(e, 'ID'))),
        task ? h('span', {}, ' · ' + task) : null,
        h('span', {}, ` · ${fmtDuration(elapsed)} · trigger ${pick(e, 'Trigger') || '–'} · ${plural(nStreams, 'stream')}`));
      card.start.disabled = true;
      card.stop.disabled = postroll;
    } else {
      card.statePill.textContent = 'idle';
      card.statePill.className = 'pill';
      card.info.replaceChildren(h('span', { class: 'muted' }, `not recording · ${plural(nStreams, 'stream')}`));
      card.start.disabled = false;
      card.stop.disabled = true;
    }
  }
  for (const [id, card] of state.cellCards) {
    if (!seen.has(id)) {
      state.cellCards.delete(id);
      card.root.remove();
    }
  }
  if (box.children.length !== order.length || order.some((el, i) => box.children[i] !== el)) box.replaceChildren(...order);
}

// ---- streams --------------------------------------------------------------

// sampleRates pushes one counter sample and returns rates over the window.
function sampleRates(stream, c, now) {
  const cur = {
    t: now,
    samples: Number(pick(c, 'Samples') || 0),
    bytes: Number(pick(c, 'Bytes') || 0),
    dropped: Number(pick(c, 'Dropped') || 0),
    lost: Number(pick(c, 'Lost') || 0),
    gaps: Number(pick(c, 'Discontinuities') || 0),
  };
  let hist = state.history.get(stream) || [];
  const last = hist[hist.length - 1];
  if (last && cur.samples < last.samples) hist = []; // daemon restarted
  if (!last || cur.samples > last.samples) state.lastChange.set(stream, now);
  hist.push(cur);
  while (hist.length > RATE_WINDOW) hist.shift();
  state.history.set(stream, hist);
  const first = hist[0];
  const dt = (cur.t - first.t) / 1000;
  if (hist.length < 2 || dt <= 0) return { cur, rate: null, bitrate: null, newDrops: 0 };
  return {
    cur,
    rate: (cur.samples - first.samples) / dt,
    bitrate: ((cur.bytes - first.bytes) * 8) / dt,
    newDrops: cur.dropped - first.dropped + (cur.lost - first.lost),
  };
}

function streamRow(name) {
  const cells = {};
  const td = (k, cls) => (cells[k] = h('td', { class: cls || '' }));
  const tr = h('tr', { dataset: { stream: name } },
    h('td', { class: 'mono' }, name), td('kind'), td('device'), td('state'),
    td('rate', 'num'), td('bitrate', 'num'), td('samples', 'num'),
    td('dropped', 'num'), td('lost', 'num'), td('gaps', 'num'), td('clock'), td('actions'));
  return { tr, cells, video: null };
}

function renderStreams(streams, devices) {
  const now = performance.now();
  const devState = new Map(devices.map((d) => [d.device, d]));
  const tbody = $('#streams tbody');
  const seen = new Set();
  const rows = [];
  for (const s of streams) {
    const name = pick(s, 'Stream');
    seen.add(name);
    let row = state.streamRows.get(name);
    if (!row) {
      row = streamRow(name);
      state.streamRows.set(name, row);
    }
    rows.push(row.tr);
    const kind = pick(s, 'Kind') || '';
    const codec = pick(s, 'Codec') || '';
    const c = pick(s, 'Counters') || {};
    const r = sampleRates(name, c, now);
    const dev = pick(s, 'Device') || '';
    const ds = devState.get(dev);
    const x = row.cells;
    x.kind.textContent = codec ? `${kind} · ${codec}` : kind;
    x.device.replaceChildren(dev, ds && ds.state !== 'streaming' ? h('span', { class: 'muted' }, ` (${ds.state})`) : '');
    // Live while the sample count grew within the last 2.5 s.
    const age = (now - (state.lastChange.get(name) || now)) / 1000;
    let st;
    if (r.cur.samples === 0) st = 'waiting';
    else if (age < 2.5) st = 'live';
    else st = `stalled ${fmtDuration(age)}`;
    if (ds && ds.state !== 'streaming' && st !== 'live') st = ds.state;
    x.state.replaceChildren(pill(st, stateKind(st)));
    x.rate.textContent = fmtRate(r.rate);
    x.bitrate.textContent = fmtBitrate(r.bitrate);
    x.samples.textContent = r.cur.samples.toLocaleString();
    x.dropped.textContent = r.cur.dropped.toLocaleString();
    x.lost.textContent = r.cur.lost.toLocaleString();
    x.gaps.textContent = r.cur.gaps.toLocaleString();
    x.dropped.classList.toggle('alert', r.newDrops > 0);
    x.lost.classList.toggle('alert', r.newDrops > 0);
    const clk = pick(s, 'Clock') || {};
    const mode = pick(clk, 'Mode') || '–';
    const conv = pick(clk, 'Converged');
    // A device clock found unusable is on arrival time: say so and why.
    const why = pick(clk, 'ClockSourceReason') || '';
    const untrusted = why !== '' && why !== 'configured' && why !== 'no device time yet';
    x.clock.textContent = `${mode}${mode === 'device' && conv === false ? ' (converging)' : ''}${untrusted ? ' (untrusted clock)' : ''} ±${fmtMs(Number(pick(clk, 'ErrorBoundNs')))}`;
    x.clock.title = `offset ${fmtMs(Number(pick(clk, 'OffsetNs')))}, drift ${Number(pick(clk, 'DriftPPM') || 0).toFixed(1)} ppm, jitter ${fmtMs(Number(pick(clk, 'JitterNs')))}, jumps ${pick(clk, 'Jumps') || 0}${untrusted ? `; on arrival time: ${why}` : ''}`;
    x.clock.classList.toggle('alert', untrusted);
    const previewable = kind === 'video' && codec === 'h264';
    if (previewable && !row.video) {
      row.video = h('button', { type: 'button', class: 'small', dataset: { action: 'preview', stream: name }, onclick: () => togglePreview(name) }, 'Preview');
      x.actions.replaceChildren(row.video);
    }
    if (row.video) row.video.textContent = state.previews.has(name) ? 'Close preview' : 'Preview';
  }
  for (const [name, row] of state.streamRows) {
    if (!seen.has(name)) {
      state.streamRows.delete(name);
      state.history.delete(name);
      row.tr.remove();
    }
  }
  if (rows.length === 0) {
    replaceRows(tbody, [], 'No streams yet: waiting for devices to deliver samples.', 12);
    return;
  }
  if (tbody.children.length !== rows.length || rows.some((el, i) => tbody.children[i] !== el)) tbody.replaceChildren(...rows);
}

// ---- devices --------------------------------------------------------------

function renderDevices(devices) {
  const tbody = $('#devices tbody');
  const rows = [];
  const seen = new Set();
  for (const d of devices) {
    seen.add(d.device);
    let row = state.deviceRows.get(d.device);
    if (!row) {
      const c = { state: h('td'), since: h('td'), reconnects: h('td', { class: 'num' }), err: h('td', { class: 'err' }), proto: h('td') };
      row = { tr: h('tr', { dataset: { device: d.device } }, h('td', { class: 'mono' }, d.device), c.proto, c.state, c.since, c.reconnects, c.err), c };
      state.deviceRows.set(d.device, row);
    }
    rows.push(row.tr);
    row.c.proto.textContent = d.protocol || '';
    row.c.state.replaceChildren(pill(d.state, stateKind(d.state)));
    const since = new Date(d.since);
    row.c.since.textContent = isNaN(since) ? '–' : `${fmtDate(since)} (${fmtDuration(Math.max(0, (Date.now() - since) / 1000))})`;
    row.c.reconnects.textContent = String(d.reconnects || 0);
    row.c.err.textContent = d.last_error || '';
  }
  for (const [id, row] of state.deviceRows) {
    if (!seen.has(id)) {
      state.deviceRows.delete(id);
      row.tr.remove();
    }
  }
  if (rows.length === 0) {
    replaceRows(tbody, [], 'No devices configured.', 6);
    return;
  }
  if (tbody.children.length !== rows.length || rows.some((el, i) => tbody.children[i] !== el)) tbody.replaceChildren(...rows);
}

// ---- storage --------------------------------------------------------------

function renderStorage(u) {
  const box = $('#storage');
  const alarms = $('#alarms');
  if (!u) {
    box.replaceChildren(h('p', { class: 'muted' }, 'No storage report.'));
    return;
  }
  const list = [...(u.alarms || [])];
  if (u.full && list.length === 0) list.push('storage is full: new samples are refused');
  if (list.length) {
    alarms.replaceChildren(h('strong', {}, 'Storage alarm: '), ...list.map((a, i) => h('span', {}, (i ? ' · ' : '') + a)));
    alarms.hidden = false;
  } else {
    alarms.hidden = true;
  }
  const quota = Number(u.quota || 0);
  const used = Number(u.bytes || 0);
  const free = Number(u.free || 0);
  // Without a quota the limit is the filesystem: used plus what is free
  // above min_free.
  const limit = quota > 0 ? quota : used + Math.max(0, free - Number(u.min_free || 0));
  const frac = limit > 0 ? Math.min(1, used / limit) : 0;
  box.replaceChildren(
    h('div', { class: 'bar' + (u.full ? ' full' : frac > 0.9 ? ' high' : '') }, h('span', { style: null, class: 'fill', dataset: { frac: frac.toFixed(3) } })),
    h('dl', { class: 'kv' },
      h('dt', {}, 'Used'), h('dd', {}, `${fmtBytes(used)} (Pebble ${fmtBytes(u.db_bytes)}, ${u.segments || 0} segments ${fmtBytes(u.segment_bytes)})`),
      h('dt', {}, 'Quota'), h('dd', {}, quota > 0 ? `${fmtBytes(quota)} (${(frac * 100).toFixed(1)}% used)` : 'none'),
      h('dt', {}, 'Free on disk'), h('dd', {}, `${fmtBytes(free)} (keeps ${fmtBytes(u.min_free)} free)`),
      h('dt', {}, 'State'), h('dd', {}, u.full ? pill('full: refusing new samples', 'bad') : pill('ok', 'good')),
      h('dt', {}, 'Alarms'), h('dd', {}, list.length ? list.join('; ') : 'none')));
  // CSP forbids inline style attributes; set the width through CSSOM.
  box.querySelector('.fill').style.width = (frac * 100).toFixed(1) + '%';
}

// ---- WebRTC preview -------------------------------------------------------

function renderWebRTC(w) {
  const sessions = (w && w.sessions) || [];
  for (const [stream, p] of state.previews) {
    const s = sessions.find((x) => x.kind === 'whep' && x.stream === stream && p.viewer.location && p.viewer.location.endsWith('/' + x.id));
    if (s) p.server.textContent = `sent ${Number(s.sent_frames || 0).toLocaleString()} frames, dropped ${Number(s.dropped_frames || 0).toLocaleString()}`;
  }
}

function togglePreview(stream) {
  if (state.previews.has(stream)) closePreview(stream);
  else openPreview(stream);
}

function openPreview(stream) {
  $('#preview-hint')?.remove();
  const video = h('video', { autoplay: true, muted: true, playsinline: true, dataset: { stream } });
  video.muted = true; // the attribute alone does not mute a media stream in every browser
  const st = pill('starting', 'info');
  const stats = h('span', { class: 'muted' });
  const server = h('span', { class: 'muted' });
  const close = h('button', { type: 'button', class: 'small', 'aria-label': 'close preview', onclick: () => closePreview(stream) }, '×');
  // Shown when the session fails (daemon restarted, network gone, 404).
  const retry = h('button', { type: 'button', class: 'small', hidden: true, onclick: () => { closePreview(stream); openPreview(stream); } }, 'Retry');
  const tile = h('figure', { class: 'preview', dataset: { stream } },
    h('figcaption', {}, h('span', { class: 'mono' }, stream), st, retry, close),
    video,
    h('div', { class: 'preview-stats' }, stats, ' ', server));
  $('#previews').append(tile);
  const viewer = new WHEPViewer(stream, video, (s) => {
    st.textContent = s;
    st.className = 'pill ' + stateKind(s);
    retry.hidden = s !== 'failed' && s !== 'disconnected' && s !== 'closed';
  });
  const timer = setInterval(() => {
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    const frames = q ? q.totalVideoFrames : 0;
    stats.textContent = video.videoWidth ? `${video.videoWidth}×${video.videoHeight}, ${frames.toLocaleString()} frames decoded` : 'waiting for video…';
  }, 1000);
  state.previews.set(stream, { viewer, tile, timer, server });
  viewer.start().catch((err) => {
    st.textContent = 'failed';
    st.className = 'pill bad';
    retry.hidden = false;
    stats.textContent = err.message;
    if (err instanceof AuthError) showAuthPrompt('Preview ' + stream);
  });
  refreshStatus();
}

function closePreview(stream) {
  const p = state.previews.get(stream);
  if (!p) return;
  state.previews.delete(stream);
  clearInterval(p.timer);
  p.viewer.stop();
  p.tile.remove();
  refreshStatus();
}

// ---- episodes -------------------------------------------------------------

// verdictOf returns an episode's quality verdict: { status, reasons, title }.
function verdictOf(e) {
  const v = pick(e, 'Verdict');
  if (!v) return null;
  const reasons = pick(v, 'Reasons') || [];
  const title = reasons.map((r) => `${pick(r, 'Stream')}: ${pick(r, 'Code')} – ${pick(r, 'Detail')}`).join('\n');
  return { status: pick(v, 'Status'), reasons, title };
}

function qualitySummary(q) {
  if (!Array.isArray(q) || q.length === 0) return { text: '–', bad: false, bytes: null };
  let gaps = 0;
  let lost = 0;
  let drops = 0;
  let dec = 0;
  let bound = 0;
  let bytes = 0;
  for (const r of q) {
    gaps += Number(pick(r, 'Gaps') || 0);
    lost += Number(pick(r, 'Lost') || 0);
    drops += Number(pick(r, 'Drops') || 0);
    dec += Number(pick(r, 'DecodeErrors') || 0);
    bytes += Number(pick(r, 'Bytes') || 0);
    bound = Math.max(bound, Number(pick(r, 'AlignmentErrorBoundMs') || 0));
  }
  let cov = 1;
  for (const r of q) cov = Math.min(cov, Number(pick(r, 'Coverage') ?? 1));
  const parts = [plural(q.length, 'stream')];
  if (cov < 1) parts.push(`coverage ≥${(cov * 100).toFixed(1)}%`);
  if (gaps) parts.push(`${gaps} gaps`);
  if (lost) parts.push(`${lost} lost`);
  if (drops) parts.push(`${drops} dropped`);
  if (dec) parts.push(`${dec} decode errors`);
  parts.push(`align ≤${bound.toFixed(2)} ms`);
  return { text: parts.join(' · '), bad: lost + dec > 0, bytes };
}

function episodeRow(id) {
  const c = {};
  for (const k of ['cell', 'task', 'state', 'trigger', 'start', 'dur', 'size', 'quality', 'actions']) c[k] = h('td');
  c.dur.className = c.size.className = 'num';
  const details = h('button', { type: 'button', class: 'small', dataset: { action: 'details', episode: id }, onclick: () => selectEpisode(id) }, 'Details');
  const exp = exportLink(id, 'button small', 'Export');
  exp.dataset.action = 'export';
  exp.dataset.episode = id;
  c.actions.append(details, ' ', exp);
  const tr = h('tr', { dataset: { episode: id } },
    h('td', { class: 'mono', title: id }, shortID(id)), c.cell, c.task, c.state, c.trigger, c.start, c.dur, c.size, c.quality, c.actions);
  return { tr, c, exp };
}

function renderEpisodes(list) {
  const tbody = $('#episodes tbody');
  const rows = [];
  const seen = new Set();
  for (const e of list) {
    const id = pick(e, 'ID');
    seen.add(id);
    let row = state.episodeRows.get(id);
    if (!row) {
      row = episodeRow(id);
      state.episodeRows.set(id, row);
    }
    rows.push(row.tr);
    const st = pick(e, 'State');
    const start = Number(pick(e, 'Start'));
    const stop = Number(pick(e, 'Stop'));
    const label = st === 'recording' && stop ? 'recording (post-roll)' : st;
    const q = qualitySummary(pick(e, 'Quality'));
    row.c.cell.textContent = pick(e, 'Cell') || '';
    row.c.task.textContent = pick(e, 'Task') || '';
    row.c.state.replaceChildren(pill(label, stateKind(label)));
    const reason = pick(e, 'Reason');
    row.c.state.title = reason || '';
    const stopReason = pick(e, 'StopReason');
    row.c.trigger.textContent = (pick(e, 'Trigger') || '–') + (stopReason ? ' → ' + stopReason : '');
    row.c.start.textContent = fmtTimeNs(start);
    row.c.dur.textContent = fmtDuration(((stop || Date.now() * 1e6) - start) / 1e9);
    row.c.size.textContent = q.bytes === null ? '–' : fmtBytes(q.bytes);
    const v = verdictOf(e);
    row.c.quality.replaceChildren(...(v ? [pill(v.status, v.status === 'degraded' ? 'bad' : 'good'), ' '] : []), q.text);
    row.c.quality.title = v ? v.title : '';
    row.c.quality.dataset.quality = v ? v.status : '';
    row.c.quality.classList.toggle('alert', q.bad || (v !== null && v.status === 'degraded'));
    row.tr.classList.toggle('degraded', v !== null && v.status === 'degraded');
    row.exp.hidden = st === 'recording';
    row.tr.classList.toggle('selected', id === state.selected);
  }
  for (const [id, row] of state.episodeRows) {
    if (!seen.has(id)) {
      state.episodeRows.delete(id);
      row.tr.remove();
    }
  }
  if (rows.length === 0) {
    replaceRows(tbody, [], 'No episodes yet.', 10);
    return;
  }
  if (tbody.children.length !== rows.length || rows.some((el, i) => tbody.children[i] !== el)) tbody.replaceChildren(...rows);
}

async function selectEpisode(id) {
  state.selected = id;
  for (const [eid, row] of state.episodeRows) row.tr.classList.toggle('selected', eid === id);
  await loadDetail(id);
}

async function loadDetail(id) {
  const box = $('#episode-detail');
  let e;
  try {
    e = await getJSON(`/v1/episodes/${pathOf(id)}`);
  } catch (err) {
    box.replaceChildren(h('p', { class: 'err' }, `Episode ${id}: ${err.message}`));
    box.hidden = false;
    return;
  }
  if (state.selected !== id) return;
  state.selectedState = pick(e, 'State');
  const st = pick(e, 'State');
  const start = Number(pick(e, 'Start'));
  const stop = Number(pick(e, 'Stop'));
  const pre = Number(pick(e, 'Preroll') || 0);
  const post = Number(pick(e, 'Postroll') || 0);
  const labels = Object.entries(pick(e, 'Labels') || {}).map(([k, v]) => (v ? `${k}=${v}` : k)).join(', ');
  const q = (pick(e, 'Quality') || []).slice().sort((a, b) => String(pick(a, 'Stream')).localeCompare(String(pick(b, 'Stream'))));
  const verdict = verdictOf(e);
  const qrows = q.map((r) => {
    const clk = pick(r, 'Clock') || {};
    const bad = Number(pick(r, 'Lost') || 0) + Number(pick(r, 'DecodeErrors') || 0) > 0 ||
      (verdict !== null && verdict.reasons.some((x) => pick(x, 'Stream') === pick(r, 'Stream')));
    return h('tr', { class: bad ? 'alert' : '' },
      h('td', { class: 'mono' }, pick(r, 'Stream')),
      h('td', {}, `${pick(r, 'Kind') || ''} · ${pick(r, 'Codec') || ''}`),
      h('td', { class: 'num' }, Number(pick(r, 'Samples') || 0).toLocaleString()),
      h('td', { class: 'num' }, Number(pick(r, 'Expected') || 0).toLocaleString()),
      h('td', { class: 'num' }, pick(r, 'Coverage') === undefined ? '–' : (Number(pick(r, 'Coverage')) * 100).toFixed(2) + '%'),
      h('td', { class: 'num' }, fmtRate(Number(pick(r, 'MeanRateHz')))),
      h('td', { class: 'num' }, fmtBytes(Number(pick(r, 'Bytes')))),
      h('td', { class: 'num' }, String(pick(r, 'Gaps') || 0)),
      h('td', { class: 'num' }, String(pick(r, 'Lost') || 0)),
      h('td', { class: 'num' }, String(pick(r, 'Drops') || 0)),
      h('td', { class: 'num' }, String(pick(r, 'DecodeErrors') || 0)),
      h('td', {}, pick(clk, 'Mode') || '–'),
      h('td', { class: 'num' }, fmtMs(Number(pick(clk, 'OffsetNs')))),
      h('td', { class: 'num' }, Number(pick(clk, 'DriftPPM') || 0).toFixed(1)),
      h('td', { class: 'num' }, fmtMs(Number(pick(clk, 'JitterNs')))),
      h('td', { class: 'num' }, Number(pick(r, 'AlignmentErrorBoundMs') || 0).toFixed(2) + ' ms'));
  });
  const actions = [
    exportLink(id, 'button', 'Download MCAP', st === 'recording'),
  ];
  if (st === 'quarantined' || st === 'failed') actions.push(retryButton(id));
  actions.push(h('button', { type: 'button', onclick: () => { state.selected = null; box.hidden = true; renderSelected(); } }, 'Close'));
  box.replaceChildren(...[
    h('h3', {}, 'Episode ', h('span', { class: 'mono' }, id), ' ', pill(st, stateKind(st))),
    pick(e, 'Reason') ? h('p', { class: 'err' }, pick(e, 'Reason')) : null,
    h('dl', { class: 'kv' },
      h('dt', {}, 'Cell'), h('dd', {}, pick(e, 'Cell') || '–'),
      h('dt', {}, 'Task'), h('dd', {}, pick(e, 'Task') || '–'),
      h('dt', {}, 'Operator / robot'), h('dd', {}, `${pick(e, 'Operator') || '–'} / ${pick(e, 'Robot') || '–'}`),
      h('dt', {}, 'Labels'), h('dd', {}, labels || '–'),
      h('dt', {}, 'Trigger'), h('dd', {}, `${pick(e, 'Trigger') || '–'}${pick(e, 'StopReason') ? ', stopped by ' + pick(e, 'StopReason') : ''}${pick(e, 'Priority') ? ', priority' : ''}`),
      h('dt', {}, 'Window'), h('dd', {}, `${fmtTimeNs(start)} – ${stop ? fmtTimeNs(stop) : 'now'} (${stop ? fmtDuration((stop - start) / 1e9) : 'recording'}), pre-roll ${fmtDuration(pre / 1e9)}, post-roll ${fmtDuration(post / 1e9)}`)),
    h('h4', {}, 'Quality report ', verdict ? pill(verdict.status, verdict.status === 'degraded' ? 'bad' : 'good') : null),
    verdict && verdict.reasons.length
      ? h('ul', { class: 'reasons' }, ...verdict.reasons.map((x) => h('li', { class: 'alert' }, h('span', { class: 'mono' }, pick(x, 'Stream')), ` ${pick(x, 'Code')}: ${pick(x, 'Detail')}`)))
      : null,
    gapList(q),
    q.length
      ? h('table', { class: 'quality' },
        h('thead', {}, h('tr', {}, ...['Stream', 'Kind', 'Samples', 'Expected', 'Coverage', 'Rate', 'Bytes', 'Gaps', 'Lost', 'Dropped', 'Decode err.', 'Clock', 'Offset', 'Drift ppm', 'Jitter', 'Align ≤'].map((t, i) => h('th', { class: i >= 2 && i !== 11 ? 'num' : '' }, t)))),
        h('tbody', {}, ...qrows))
      : h('p', { class: 'muted' }, st === 'recording' ? 'The report is written when the episode closes.' : 'No quality report.'),
    h('div', { class: 'actions' }, ...actions)].filter(Boolean));
  box.hidden = false;
}

// gapList lists every stream's gaps with their causes (at most 50 shown).
function gapList(q) {
  const items = [];
  for (const r of q) {
    for (const g of pick(r, 'GapList') || []) {
      const from = Number(pick(g, 'From'));
      const to = Number(pick(g, 'To'));
      items.push(h('li', {}, h('span', { class: 'mono' }, pick(r, 'Stream')), ` ${fmtTimeNs(from)} +${fmtDuration((to - from) / 1e9)} ${pick(g, 'Cause')}`));
    }
  }
  if (items.length === 0) return null;
  const shown = items.slice(0, 50);
  if (items.length > shown.length) shown.push(h('li', { class: 'muted' }, `${items.length - shown.length} more`));
  return h('details', { class: 'gaps' }, h('summary', {}, plural(items.length, 'gap')), h('ul', {}, ...shown));
}

function renderSelected() {
  for (const [eid, row] of state.episodeRows) row.tr.classList.toggle('selected', eid === state.selected);
}

function retryButton(id) {
  return h('button', {
    type: 'button',
    dataset: { action: 'retry', episode: id },
    onclick: async () => {
      try {
        await send('POST', `/v1/episodes/${pathOf(id)}/retry`);
        actionDone();
        showError(null);
      } catch (err) {
        report('Retry upload of ' + shortID(id), err);
      }
      refreshUploads();
      refreshEpisodes();
    },
  }, 'Retry upload');
}

// ---- uploads --------------------------------------------------------------

function queueTable(entries, withRetry) {
  return h('table', { class: 'queue' },
    h('thead', {}, h('tr', {}, ...['Episode', 'Cell', 'State', 'Size', 'Recorded', 'Attempts', 'Next attempt', 'Last error', ''].map((t) => h('th', {}, t)))),
    h('tbody', {}, ...entries.map((q) => h('tr', { dataset: { episode: q.id } },
      h('td', { class: 'mono', title: q.id }, shortID(q.id), q.priority ? pill('priority', 'info') : ''),
      h('td', {}, q.cell || ''),
      h('td', {}, pill(q.state, stateKind(q.state))),
      h('td', { class: 'num' }, fmtBytes(q.bytes)),
      h('td', { class: 'num' }, fmtDuration(q.seconds)),
      h('td', { class: 'num' }, String(q.attempts || 0)),
      h('td', {}, q.next_attempt ? fmtDate(new Date(q.next_attempt)) : ''),
      h('td', { class: 'err' }, q.reason || q.last_error || ''),
      h('td', {}, withRetry ? retryButton(q.id) : '')))));
}

function renderUploads(u) {
  const box = $('#uploads');
  if (!u || !u.target) {
    box.replaceChildren(h('p', { class: 'muted' }, (u && u.note) || 'No sync target is configured.'));
    return;
  }
  const w = u.window || {};
  let win;
  if (w.always) win = pill('always open', 'good');
  else {
    win = h('span', {}, pill(w.open ? 'open' : 'closed', w.open ? 'good' : 'warn'),
      ` ${(w.windows || []).join(', ')} (${w.timezone || 'local'})`,
      w.next_change ? ` · ${w.open ? 'closes' : 'opens'} ${fmtDate(new Date(w.next_change))}` : '');
  }
  const parts = [
    h('dl', { class: 'kv' },
      h('dt', {}, 'Target'), h('dd', { class: 'mono' }, u.target),
      h('dt', {}, 'Window'), h('dd', {}, win),
      h('dt', {}, 'Bandwidth'), h('dd', {}, `${u.bandwidth_bytes_per_sec ? 'cap ' + fmtBitrate(u.bandwidth_bytes_per_sec * 8) : 'no cap'} · now ${fmtBitrate((u.rate_bytes_per_sec || 0) * 8)}`),
      h('dt', {}, 'Backlog'), h('dd', {}, `${plural((u.queue || []).length, 'episode')}, ${fmtBytes(u.bytes_remaining)}, ${fmtDuration((u.hours_remaining || 0) * 3600)} recorded` +
        (u.drain_seconds > 0 ? `, drains in about ${fmtDuration(u.drain_seconds)}` : u.drain_seconds < 0 ? ', drain time unknown' : '')),
      h('dt', {}, 'Uploaded'), h('dd', {}, `${plural(u.uploaded || 0, 'episode')} since start`),
      u.last_error ? h('dt', {}, 'Last error') : null, u.last_error ? h('dd', { class: 'err' }, u.last_error) : null),
  ];
  if (u.active) {
    const a = u.active;
    const frac = a.size > 0 ? Math.min(1, a.done / a.size) : 0;
    const fill = h('span', { class: 'fill' });
    fill.style.width = (frac * 100).toFixed(1) + '%';
    parts.push(h('div', { class: 'active' },
      h('div', {}, 'Uploading ', h('span', { class: 'mono', title: a.episode }, shortID(a.episode)), ` ${a.key} · ${fmtBytes(a.done)} of ${fmtBytes(a.size)}`),
      h('div', { class: 'bar' }, fill)));
  }
  parts.push(h('h4', {}, 'Queue'));
  parts.push((u.queue || []).length ? queueTable(u.queue, false) : h('p', { class: 'muted' }, 'Nothing waiting.'));
  if ((u.failed || []).length) parts.push(h('h4', {}, 'Failed'), queueTable(u.failed, true));
  if ((u.quarantined || []).length) parts.push(h('h4', {}, 'Quarantined'), queueTable(u.quarantined, true));
  box.replaceChildren(...parts);
}

// ---- token ----------------------------------------------------------------

function initToken() {
  const input = $('#token');
  const t = getToken();
  input.value = t;
  input.placeholder = t ? 'set' : 'not set';
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    input.placeholder = input.value.trim() ? 'set' : 'not set';
    $('#auth-prompt').hidden = true;
    showError(null);
    refreshStatus();
    refreshEpisodes();
    refreshUploads();
  });
  $('#token-clear').addEventListener('click', () => {
    input.value = '';
    setToken('');
    input.placeholder = 'not set';
  });
}

// ---- start ----------------------------------------------------------------

let refreshStatus = () => {};

function main() {
  initToken();
  refreshStatus = every(STATUS_EVERY_MS, pollStatus);
  refreshEpisodes = every(LIST_EVERY_MS, pollEpisodes);
  refreshUploads = every(LIST_EVERY_MS, pollUploads);
  addEventListener('pagehide', () => {
    for (const p of state.previews.values()) p.viewer.stop();
  });
  // Test and debugging hook: the open previews by stream.
  window.episoded = { previews: state.previews, openPreview, closePreview, HTTPError };
}

main();
