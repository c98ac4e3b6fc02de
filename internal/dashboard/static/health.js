// health.js: the health banner at the top of the page. It sums up what
// needs a look, each item linking to its section: recording or idle,
// devices down, degraded episodes, storage alarms, and the upload backlog
// against what the upload window can send. The banner's level is its worst
// item's: bad (red), warn (amber) or ok (green).

import { fmtBytes, fmtDuration, h, pick, plural, shortID } from './ui.js';

// A device still connecting after this long counts as down (at start every
// device connects for a moment).
const CONNECTING_GRACE_MS = 10000;
// An upload backlog the window cannot send within a day is a warning.
const DRAIN_WARN_SECONDS = 24 * 3600;

const RANK = { ok: 0, info: 0, warn: 1, bad: 2 };

// devicesDown returns the devices that are not streaming and not merely
// starting.
export function devicesDown(devices, now) {
  return (devices || []).filter((d) => {
    if (d.state === 'streaming' || d.state === 'stopped') return false;
    if (d.state === 'connecting') {
      // Reconnecting after a failure is down; a first connect gets a grace.
      if ((d.reconnects || 0) > 0) return true;
      const since = Date.parse(d.since);
      return isFinite(since) && now - since > CONNECTING_GRACE_MS;
    }
    return true; // backoff
  });
}

function item(key, level, href, title, text, tip) {
  return { key, level, href, title, text, tip: tip || '' };
}

// healthItems derives the banner's items. st is /v1/status (or null while
// unreachable), degraded the recent degraded episodes (or null: unknown),
// uploads /v1/uploads (or null).
export function healthItems(st, degraded, uploads, now) {
  const items = [];
  const cells = (st && st.cells) || [];
  const rec = cells.filter((c) => pick(c, 'Recording'));
  items.push(rec.length
    ? item('recording', 'info', '#recording-section', 'Recording', rec.map((c) => pick(c, 'Cell')).join(', '))
    : item('recording', 'ok', '#recording-section', 'Idle', cells.length ? 'no cell recording' : 'no cells'));

  const devs = (st && st.devices) || [];
  const down = devicesDown(devs, now);
  items.push(down.length
    ? item('devices', 'bad', '#devices-section', plural(down.length, 'device') + ' down',
      down.map((d) => `${d.device} (${d.state})`).join(', '),
      down.map((d) => `${d.device}: ${d.last_error || d.state}`).join('\n'))
    : item('devices', 'ok', '#devices-section', 'Devices', devs.length ? `all ${devs.length} up` : 'none configured'));

  if (degraded === null) items.push(item('degraded', 'ok', '#episodes-section', 'Quality', 'unknown'));
  else if (degraded.length) {
    const first = degraded[0];
    const reasons = pick(pick(first, 'Verdict'), 'Reasons') || [];
    const why = reasons.length ? `${pick(reasons[0], 'Stream')}: ${pick(reasons[0], 'Code')}` : '';
    items.push(item('degraded', 'warn', '#episodes-section', plural(degraded.length, 'degraded episode') + ' (24 h)',
      `latest ${shortID(pick(first, 'ID'))}${why ? ' · ' + why : ''}`,
      reasons.map((r) => `${pick(r, 'Stream')}: ${pick(r, 'Code')} – ${pick(r, 'Detail')}`).join('\n')));
  } else items.push(item('degraded', 'ok', '#episodes-section', 'Quality', 'no degraded episode in 24 h'));

  const u = st && st.storage;
  if (!u) items.push(item('storage', 'ok', '#storage-section', 'Storage', 'no report'));
  else if (u.full || (u.alarms || []).length) {
    items.push(item('storage', 'bad', '#storage-section', u.full ? 'Storage full' : 'Storage alarm',
      (u.alarms || []).join('; ') || 'new samples are refused'));
  } else items.push(item('storage', 'ok', '#storage-section', 'Storage', `${fmtBytes(u.bytes)} used, ${fmtBytes(u.free)} free`));

  if (!uploads || !uploads.target) items.push(item('uploads', 'ok', '#uploads-section', 'Uploads', 'no target'));
  else {
    const stuck = (uploads.failed || []).length + (uploads.quarantined || []).length;
    const backlog = Number(uploads.bytes_remaining || 0);
    const n = (uploads.queue || []).length;
    const drain = Number(uploads.drain_seconds);
    const w = uploads.window || {};
    const win = w.always ? 'window always open' : w.open ? 'window open' : 'window closed';
    if (stuck) {
      items.push(item('uploads', 'bad', '#uploads-section', plural(stuck, 'upload') + ' failed or quarantined',
        uploads.last_error || 'retry from the uploads section'));
    } else if (n && (drain < 0 || drain > DRAIN_WARN_SECONDS)) {
      items.push(item('uploads', 'warn', '#uploads-section', 'Upload backlog',
        `${fmtBytes(backlog)} in ${plural(n, 'episode')}: ${drain < 0 ? 'drain time unknown' : 'drains in ' + fmtDuration(drain) + ', over a day'} (${win})`));
    } else {
      items.push(item('uploads', 'ok', '#uploads-section', 'Uploads',
        n ? `${fmtBytes(backlog)} waiting, drains in ${fmtDuration(drain)} (${win})` : `nothing waiting (${win})`));
    }
  }
  return items;
}

// renderHealth draws the items into box and sets its level.
export function renderHealth(box, items, unreachable) {
  let level = 'ok';
  for (const it of items) if (RANK[it.level] > RANK[level]) level = it.level;
  if (unreachable) level = 'bad';
  box.dataset.level = level;
  box.className = 'health level-' + level;
  const head = unreachable
    ? 'Daemon unreachable'
    : level === 'bad' ? 'Needs attention' : level === 'warn' ? 'Check' : 'All good';
  box.replaceChildren(
    h('strong', { class: 'health-head' }, head),
    ...items.map((it) => h('a', { class: 'health-item level-' + it.level, href: it.href, title: it.tip, dataset: { item: it.key, level: it.level } },
      h('b', {}, it.title), ' ', h('span', {}, it.text))));
  box.hidden = false;
}
