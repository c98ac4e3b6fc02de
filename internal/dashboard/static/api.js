// api.js: the dashboard's only way to reach the daemon. Every request
// carries the token from sessionStorage as a bearer token: with a token
// configured the daemon answers nothing under /v1 or /whep without one,
// reads included. A 401 raises AuthError so the page can prompt for the
// token; a 403 on an action raises ForbiddenError (a read-only token).
//
// The token lives in sessionStorage only: it is gone when the tab closes,
// and never written to disk by the browser.

const TOKEN_KEY = 'episoded.token';

// Earlier versions kept the token in localStorage, which outlives the
// session: remove it.
try {
  localStorage.removeItem(TOKEN_KEY);
} catch {
  // storage disabled
}

let memoryToken = '';

export class AuthError extends Error {
  constructor(message) {
    super(message || 'missing or wrong API token');
    this.name = 'AuthError';
  }
}

export class ForbiddenError extends Error {
  constructor(message) {
    super(message || 'this token may not do that');
    this.name = 'ForbiddenError';
  }
}

export class HTTPError extends Error {
  constructor(status, message) {
    super(message);
    this.name = 'HTTPError';
    this.status = status;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return memoryToken;
  }
}

export function setToken(t) {
  memoryToken = t || '';
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token then lives only until reload.
  }
}

// authHeaders returns the Authorization header, or nothing when no token
// is set.
export function authHeaders() {
  const t = getToken();
  return t ? { Authorization: 'Bearer ' + t } : {};
}

// errorText reads {"error": "..."} from a failed response, or its status.
async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error;
  } catch {
    // not JSON
  }
  return res.status + ' ' + res.statusText;
}

// check turns a failed response into the matching error.
async function check(res, what) {
  if (res.status === 401) throw new AuthError(await errorText(res));
  if (res.status === 403) throw new ForbiddenError(await errorText(res));
  if (!res.ok) throw new HTTPError(res.status, `${what}: ${await errorText(res)}`);
}

export async function getJSON(path) {
  const res = await fetch(path, { headers: { Accept: 'application/json', ...authHeaders() }, cache: 'no-store' });
  await check(res, `GET ${path}`);
  return res.json();
}

// send makes a mutating request with the bearer token and returns the
// parsed JSON body (or null for an empty one).
export async function send(method, path, body) {
  const headers = { Accept: 'application/json', ...authHeaders() };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  await check(res, `${method} ${path}`);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

// download fetches path with the token (a plain link cannot send one) and
// saves it as filename. The file is held in memory until it is saved.
export async function download(path, filename) {
  const res = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
  await check(res, `GET ${path}`);
  const url = URL.createObjectURL(await res.blob());
  try {
    const a = document.createElement('a');
    a.href = url;
    a.download = filename;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
  } finally {
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }
}

// pathOf encodes each segment of a stream or episode id but keeps the
// slashes, which the daemon's routes expect (/whep/cell1/cam1).
export function pathOf(id) {
  return String(id).split('/').map(encodeURIComponent).join('/');
}
