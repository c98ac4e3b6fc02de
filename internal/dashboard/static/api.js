// api.js: the dashboard's only way to reach the daemon. Reads are plain
// GETs; mutating requests carry the token from localStorage as a bearer
// token. A 401 raises AuthError so the page can prompt for the token.

const TOKEN_KEY = 'episoded.token';

export class AuthError extends Error {
  constructor(message) {
    super(message || 'missing or wrong API token');
    this.name = 'AuthError';
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
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(t) {
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token then lives only until reload.
  }
}

// authHeaders returns the Authorization header for a mutating request, or
// nothing when no token is set.
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

export async function getJSON(path) {
  const res = await fetch(path, { headers: { Accept: 'application/json' }, cache: 'no-store' });
  if (res.status === 401) throw new AuthError(await errorText(res));
  if (!res.ok) throw new HTTPError(res.status, `GET ${path}: ${await errorText(res)}`);
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
  if (res.status === 401) throw new AuthError(await errorText(res));
  if (!res.ok) throw new HTTPError(res.status, `${method} ${path}: ${await errorText(res)}`);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

// pathOf encodes each segment of a stream or episode id but keeps the
// slashes, which the daemon's routes expect (/whep/cell1/cam1).
export function pathOf(id) {
  return String(id).split('/').map(encodeURIComponent).join('/');
}
