// ui.js: DOM and formatting helpers. Every text from the daemon goes
// through textContent (never innerHTML), so stream names, labels and error
// messages cannot inject markup.

// h builds an element: h('td', {class: 'num'}, 'text', childNode, ...).
// Attributes starting with "on" are event listeners; null/false are skipped.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// pick reads a field whatever its JSON spelling: Go's default (ID,
// StopReason), lowerCamel (stopReason) or snake_case (stop_reason).
export function pick(o, name) {
  if (!o) return undefined;
  if (name in o) return o[name];
  const lower = name.charAt(0).toLowerCase() + name.slice(1);
  if (lower in o) return o[lower];
  const snake = name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
  if (snake in o) return o[snake];
  const flat = name.toLowerCase();
  if (flat in o) return o[flat];
  return undefined;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
}

export function fmtBitrate(bitsPerSec) {
  if (bitsPerSec === null || bitsPerSec === undefined || !isFinite(bitsPerSec)) return '–';
  const units = ['bit/s', 'kbit/s', 'Mbit/s', 'Gbit/s'];
  let i = 0;
  let v = bitsPerSec;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return v.toFixed(v < 10 && i > 0 ? 2 : i > 0 ? 1 : 0) + ' ' + units[i];
}

export function fmtRate(hz) {
  if (hz === null || hz === undefined || !isFinite(hz)) return '–';
  return (hz < 10 ? hz.toFixed(1) : hz.toFixed(0)) + ' /s';
}

// fmtDuration formats seconds as 1h02m, 3m05s or 4.2s.
export function fmtDuration(sec) {
  if (sec === null || sec === undefined || !isFinite(sec) || sec < 0) return '–';
  if (sec < 60) return sec.toFixed(sec < 10 ? 1 : 0) + 's';
  const s = Math.floor(sec % 60);
  const m = Math.floor(sec / 60) % 60;
  const hrs = Math.floor(sec / 3600);
  if (hrs > 0) return `${hrs}h${String(m).padStart(2, '0')}m`;
  return `${m}m${String(s).padStart(2, '0')}s`;
}

// fmtTimeNs formats int64 ns since the epoch as local date and time.
// JSON numbers lose the last digits of ns timestamps; milliseconds survive.
export function fmtTimeNs(ns) {
  if (!ns) return '–';
  return fmtDate(new Date(Number(ns) / 1e6));
}

export function fmtDate(d) {
  if (!(d instanceof Date) || isNaN(d)) return '–';
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour12: false });
  if (d.toDateString() === today.toDateString()) return time;
  return d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + time;
}

export function fmtMs(ns) {
  if (ns === null || ns === undefined || !isFinite(ns)) return '–';
  return (ns / 1e6).toFixed(Math.abs(ns) < 1e7 ? 2 : 1) + ' ms';
}

// plural formats "1 episode" and "3 episodes".
export function plural(n, word) {
  return `${Number(n).toLocaleString()} ${word}${Number(n) === 1 ? '' : 's'}`;
}

export function shortID(id) {
  const s = String(id || '');
  return s.length > 13 ? s.slice(0, 8) + '…' + s.slice(-4) : s;
}

// replaceRows swaps a table body's rows in one step.
export function replaceRows(tbody, rows, emptyText, cols) {
  if (rows.length === 0) rows = [h('tr', {}, h('td', { colspan: cols, class: 'muted' }, emptyText))];
  tbody.replaceChildren(...rows);
}

export function pill(text, kind) {
  return h('span', { class: 'pill ' + (kind || '') }, text);
}

// stateKind maps a state word to a pill colour.
export function stateKind(state) {
  switch (String(state || '').split(' ')[0]) {
    case 'streaming':
    case 'live':
    case 'connected':
    case 'uploaded':
    case 'open':
    case 'ok':
      return 'good';
    case 'recording':
    case 'uploading':
    case 'closed':
    case 'connecting':
    case 'queued':
      return 'info';
    case 'stalled':
    case 'waiting':
    case 'backoff':
    case 'interrupted':
    case 'failed':
    case 'disconnected':
      return 'warn';
    case 'quarantined':
    case 'error':
    case 'full':
      return 'bad';
    default:
      return '';
  }
}
