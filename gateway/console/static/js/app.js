// The console's shell: sign-in, navigation (hash routes), polling while a page is shown.
import { api, ApiError, session } from './api.js';
import { clear, h } from './dom.js';
import * as calls from './calls.js';
import * as deliveries from './deliveries.js';
import * as webhooks from './webhooks.js';
import * as campaigns from './campaigns.js';

const PAGES = {
  calls: { list: calls.listPage, item: calls.callPage },
  deliveries: { list: deliveries.listPage, item: deliveries.deliveryPage },
  webhooks: { list: webhooks.listPage, item: webhooks.listPage },
  campaigns: { list: campaigns.listPage, item: campaigns.listPage },
};

const $ = (id) => document.getElementById(id);
let current = null; // the shown page's context: its timers stop when another page is shown

function toast(text, kind = 'ok') {
  const el = $('toast');
  el.textContent = text;
  el.className = `toast toast-${kind}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, search = ''] = raw.split('?');
  const [section = 'calls', ...rest] = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { section, id: rest.join('/') || null, params: new URLSearchParams(search) };
}

class PageContext {
  constructor(route) {
    this.route = route;
    this.timers = [];
    this.alive = true;
  }

  /** Run fn now and every `ms` while this page is shown (one run at a time). */
  poll(fn, ms = 2000) {
    let running = false;
    const tick = async () => {
      if (!this.alive || running || document.hidden) return;
      running = true;
      try { await fn(); } catch (error) { this.failed(error); } finally { running = false; }
    };
    this.timers.push(setInterval(tick, ms));
    $('live').hidden = false;
    return tick();
  }

  /** Replace the query of the current route (filters), without a new page. */
  setParams(params) {
    const search = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v) search.set(k, v);
    const text = search.toString();
    const base = location.hash.split('?')[0] || '#/calls';
    history.replaceState(null, '', text ? `${base}?${text}` : base);
    this.route.params = search;
  }

  toast(text, kind) { toast(text, kind); }

  failed(error) {
    if (error instanceof ApiError && error.status === 401) return;
    toast(error.message || String(error), 'error');
  }

  stop() {
    this.alive = false;
    this.timers.forEach(clearInterval);
  }
}

async function show() {
  if (!session.key) { signedOut(); return; }
  $('signin').hidden = true;
  $('shell').hidden = false;
  current?.stop();
  $('live').hidden = true;
  const route = parseRoute();
  const page = PAGES[route.section] || PAGES.calls;
  for (const a of document.querySelectorAll('.nav a')) {
    if (a.dataset.section === route.section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const view = clear($('view'));
  const ctx = new PageContext(route);
  current = ctx;
  try {
    await (route.id && page.item ? page.item : page.list)(view, ctx);
  } catch (error) {
    if (ctx.alive && !(error instanceof ApiError && error.status === 401)) {
      clear(view, h('div', { class: 'card error-card', role: 'alert' },
        h('h1', {}, error.status === 404 ? 'Not found' : 'Something went wrong'), h('p', {}, error.message)));
    }
  }
}

function signedOut(message) {
  current?.stop();
  current = null;
  session.clear();
  $('shell').hidden = true;
  $('signin').hidden = false;
  const error = $('signin-error');
  error.hidden = !message;
  error.textContent = message || '';
  $('api-key').focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $('api-key');
  const key = input.value.trim();
  const error = $('signin-error');
  if (!key) {
    error.textContent = 'Enter the API key.';
    error.hidden = false;
    return;
  }
  const button = event.target.querySelector('button');
  button.disabled = true;
  try {
    await api('/api/v1/calls?limit=1', { key });
    session.set(key);
    input.value = '';
    error.hidden = true;
    if (!location.hash) history.replaceState(null, '', '#/calls');
    await show();
  } catch (failure) {
    error.textContent = failure.status === 401
      ? 'That API key was not accepted. Check the api_key in the gateway\'s configuration.'
      : `The gateway could not be reached: ${failure.message}`;
    error.hidden = false;
    input.select();
  } finally {
    button.disabled = false;
  }
}

window.addEventListener('console:signed-out', () => signedOut('Your API key is no longer accepted. Sign in again.'));
window.addEventListener('hashchange', show);
document.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => signedOut());
  show();
});
