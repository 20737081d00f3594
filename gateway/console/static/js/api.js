// The admin API from the page: the key from sessionStorage as a bearer token, no cookies.

const KEY = 'gateway.console.api-key';
const BASE = new URL('..', document.baseURI); // the console lives at <gateway>/console/

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/** The gateway's own path of an absolute link the API handed out (recordings, transcripts): the
 * console plays them from this origin, whatever public_url the link was made for. */
export function local(url) {
  try {
    const parsed = new URL(url, BASE);
    return new URL(parsed.pathname.replace(/^\//, '') + parsed.search, BASE).href;
  } catch {
    return null;
  }
}

export async function api(path, { method = 'GET', body, key } = {}) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${key ?? session.key ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(new URL(path.replace(/^\//, ''), BASE), {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit', cache: 'no-store', redirect: 'error',
    });
  } catch (error) {
    throw new ApiError(0, `the gateway did not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const detail = (data && typeof data.detail === 'string') ? data.detail : (text || response.statusText);
    if (response.status === 401 && key === undefined) window.dispatchEvent(new CustomEvent('console:signed-out'));
    throw new ApiError(response.status, detail);
  }
  return data;
}

/** Query string from an object, empty values left out. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
