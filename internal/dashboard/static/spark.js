// spark.js: hand-drawn SVG sparklines for the trends section. No library:
// a polyline per run of known values (null splits the line), scaled to the
// series' own range, drawn in a fixed viewBox that stretches to the width
// of its box. Colours come from style.css (CSP: no inline styles).

const NS = 'http://www.w3.org/2000/svg';
const W = 120;
const H = 28;

// sparkline returns an <svg> for values (numbers or null) at times ts (ms),
// over the window [from, to] (ms). data-points says how many values were
// drawn, for tests and for screen readers the aria-label gives the range.
export function sparkline(ts, values, from, to, label, fmt) {
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  const known = values.map((v, i) => [ts[i], v]).filter(([t, v]) => v !== null && v !== undefined && isFinite(v) && t >= from);
  svg.dataset.points = String(known.length);
  if (known.length === 0) {
    svg.setAttribute('aria-label', `${label}: no data yet`);
    return svg;
  }
  let lo = Math.min(...known.map(([, v]) => v));
  let hi = Math.max(...known.map(([, v]) => v));
  svg.setAttribute('aria-label', `${label}: ${fmt(lo)} to ${fmt(hi)} over the last ${Math.round((to - from) / 60000)} minutes`);
  if (hi === lo) {
    // A flat line sits in the middle.
    lo -= 1;
    hi += 1;
  }
  const span = Math.max(1, to - from);
  const x = (t) => (((t - from) / span) * W).toFixed(1);
  const y = (v) => (H - 2 - ((v - lo) / (hi - lo)) * (H - 4)).toFixed(1);
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      const c = document.createElementNS(NS, 'circle');
      c.setAttribute('cx', run[0][0]);
      c.setAttribute('cy', run[0][1]);
      c.setAttribute('r', '1.5');
      svg.append(c);
    } else if (run.length > 1) {
      const p = document.createElementNS(NS, 'polyline');
      p.setAttribute('points', run.map(([a, b]) => `${a},${b}`).join(' '));
      p.setAttribute('vector-effect', 'non-scaling-stroke');
      svg.append(p);
    }
    run = [];
  };
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (ts[i] < from) continue;
    if (v === null || v === undefined || !isFinite(v)) flush();
    else run.push([x(ts[i]), y(v)]);
  }
  flush();
  return svg;
}

// last returns the newest known value of a series, or null.
export function last(values) {
  for (let i = values.length - 1; i >= 0; i--) {
    if (values[i] !== null && values[i] !== undefined && isFinite(values[i])) return values[i];
  }
  return null;
}
