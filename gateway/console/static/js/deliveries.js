// Deliveries: status and subscription filters; a delivery's attempts, Retry, and Replay of a time range.
import { api, query } from './api.js';
import { badge, changes, clear, code, empty, field, h, header, link, section, select, time } from './dom.js';
import { deliveriesTable } from './calls.js';

export const STATUSES = ['pending', 'succeeded', 'failed', 'dead'];

function localInput(date) {
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 16);
}

/** The Replay form: queue a subscription's events of [since, until) again. */
export function replayForm(ctx, names, { subscription, since, until } = {}) {
  const id = (n) => `replay-${n}`;
  const result = h('p', { class: 'muted', role: 'status' });
  const pick = h('select', { id: id('subscription') }, names.map((n) => h('option', { value: n, selected: n === subscription }, n)));
  const from = h('input', { id: id('since'), type: 'datetime-local', step: '1', value: localInput(since || new Date(Date.now() - 3600_000)) });
  const to = h('input', { id: id('until'), type: 'datetime-local', step: '1', value: localInput(until || new Date(Date.now() + 60_000)) });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Replay');
  const form = h('form', { class: 'inline-form', 'aria-label': 'Replay a time range' },
    h('label', { for: id('subscription') }, 'Subscription', pick),
    h('label', { for: id('since') }, 'Since', from),
    h('label', { for: id('until') }, 'Until', to),
    button, result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      const body = { subscription: pick.value, since: new Date(from.value).toISOString(), until: new Date(to.value).toISOString() };
      const answer = await api('/api/v1/deliveries/replay', { method: 'POST', body });
      result.textContent = `${answer.queued} deliver${answer.queued === 1 ? 'y' : 'ies'} queued again for ${answer.subscription}.`;
      ctx.toast(result.textContent);
    } catch (error) {
      result.textContent = error.message;
      ctx.failed(error);
    } finally {
      button.disabled = false;
    }
  });
  if (!names.length) return empty('No subscriptions are configured.');
  return form;
}

export async function listPage(view, ctx) {
  let status = ctx.route.params.get('status') || '';
  let subscription = ctx.route.params.get('subscription') || '';
  const { subscriptions } = await api('/api/v1/subscriptions');
  const names = subscriptions.map((s) => s.name);
  const table = h('div', {});
  const filters = [
    select('Status', 'delivery-status', [['', 'All statuses'], ...STATUSES.map((s) => [s, s])], status, (v) => { status = v; ctx.setParams({ status, subscription }); refresh(); }),
    select('Subscription', 'delivery-subscription', [['', 'All subscriptions'], ...names.map((n) => [n, n])], subscription, (v) => { subscription = v; ctx.setParams({ status, subscription }); refresh(); }),
  ];
  view.append(header('Deliveries', 'Every event bound for a webhook, newest first.', ...filters),
    h('div', { class: 'card flush' }, table),
    section('Replay', h('p', { class: 'muted' }, 'Queue a subscription\'s events of a time range again (each as a new delivery).'),
      replayForm(ctx, names, { subscription: subscription || names[0] })));

  async function refresh() {
    const page = await api(`/api/v1/deliveries${query({ status, subscription, limit: 100 })}`);
    if (!ctx.alive) return;
    clear(table, deliveriesTable(page.deliveries, { showRun: true }));
  }
  await ctx.poll(refresh, 2000);
}

function requestView(request, eventEnvelope) {
  if (!request || !request.method) return empty('No request was made.');
  const headers = Object.entries(request.headers || {});
  let body = h('p', { class: 'muted' }, 'No body.');
  if (request.body) body = code(request.body, 'Request body');
  else if (eventEnvelope && request.method !== 'GET' && request.method !== 'DELETE') {
    body = h('details', {}, h('summary', {}, 'Body: the event envelope'), code(eventEnvelope, 'Request body'));
  }
  return h('div', { class: 'stack' },
    h('p', { class: 'mono request-line' }, h('strong', {}, request.method), ' ', request.url),
    headers.length ? h('table', { class: 'table kv', 'aria-label': 'Request headers' }, h('tbody', {}, headers.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', { class: 'mono' }, v))))) : null,
    body);
}

function responseView(attempt) {
  return h('div', { class: 'stack' },
    h('p', { class: 'request-line' }, attempt.status ? h('strong', {}, `HTTP ${attempt.status}`) : h('strong', {}, 'No answer'),
      typeof attempt.latency_ms === 'number' ? h('span', { class: 'muted' }, ` in ${Math.round(attempt.latency_ms)} ms`) : null),
    attempt.error ? h('p', { class: 'form-error' }, attempt.error) : null,
    attempt.response ? code(attempt.response, 'Response body') : h('p', { class: 'muted' }, 'No body.'));
}

function attemptCard(attempt, index, envelope) {
  return h('article', { class: 'card attempt' },
    h('header', { class: 'attempt-head' }, h('h3', {}, `Attempt ${index + 1}`), badge(attempt.outcome), time(attempt.attempted_at)),
    h('div', { class: 'grid two' },
      h('div', {}, h('h4', {}, 'Request sent'), requestView(attempt.request, envelope)),
      h('div', {}, h('h4', {}, 'Answer received'), responseView(attempt))));
}

export async function deliveryPage(view, ctx) {
  const id = ctx.route.id;
  const { subscriptions } = await api('/api/v1/subscriptions');
  const names = subscriptions.map((s) => s.name);
  const head = h('div', {});
  const facts = h('div', {});
  const attempts = h('div', { class: 'stack' });
  const eventBox = h('div', {});
  const retry = h('button', { type: 'button', class: 'primary' }, 'Retry');
  view.append(h('p', { class: 'crumbs' }, link('Deliveries', 'deliveries'), ' / ', id), head, facts,
    section('Attempts', attempts), section('Event', eventBox), h('div', { id: 'replay-box' }));
  let replayShown = false;

  retry.addEventListener('click', async () => {
    retry.disabled = true;
    try {
      await api(`/api/v1/deliveries/${encodeURIComponent(id)}/retry`, { method: 'POST' });
      ctx.toast('Retry queued: the delivery is due now.');
      await refresh();
    } catch (error) {
      ctx.failed(error);
    } finally {
      retry.disabled = false;
    }
  });

  const changed = changes();
  async function refresh() {
    const d = await api(`/api/v1/deliveries/${encodeURIComponent(id)}`);
    if (!ctx.alive || !changed(d)) return;
    clear(head, header(d.event_type ? `${d.event_type} → ${d.subscription}` : d.subscription, `Delivery ${d.id}`, badge(d.status), retry));
    clear(facts, h('section', { class: 'card' }, h('dl', { class: 'facts' },
      field('Status', badge(d.status)), field('Subscription', d.subscription),
      field('Call', d.workflow_run_id ? link(d.workflow_run_id, 'calls', d.workflow_run_id) : null),
      field('Attempts', String(d.attempts.length)), field('Next attempt', d.next_attempt_at ? time(d.next_attempt_at) : null),
      field('First attempt', time(d.first_attempt_at)), field('Last attempt', time(d.last_attempt_at)),
      field('Last answer', d.last_status ? `HTTP ${d.last_status}` : d.last_error), field('Created', time(d.created_at)))));
    clear(attempts, d.attempts.length ? [...d.attempts].reverse().map((a, i) => attemptCard(a, d.attempts.length - 1 - i, d.event)) : empty('No attempt yet.'));
    clear(eventBox, d.event ? code(d.event, 'Event envelope') : empty('The event is gone.'));
    if (!replayShown) {
      const at = d.event?.timestamp ? new Date(d.event.timestamp) : new Date(d.created_at);
      document.getElementById('replay-box').append(section('Replay',
        h('p', { class: 'muted' }, 'Queue this subscription\'s events of a time range again.'),
        replayForm(ctx, names, { subscription: d.subscription, since: new Date(at.getTime() - 60_000), until: new Date(at.getTime() + 60_000) })));
      replayShown = true;
    }
  }
  await ctx.poll(refresh, 2000);
}
