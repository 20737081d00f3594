// Webhooks: each subscription's configuration (secrets redacted by the API) and health, Enable
// for a disabled one, and a testing panel: the templates' inputs as fields, Send test, and the
// rendered request, the answer, the verdict and the mapped attributes.
import { api } from './api.js';
import { badge, clear, code, empty, field, h, header, route, section, time } from './dom.js';

function healthBadge(sub) {
  if (!sub.enabled) return badge('off', 'canceled');
  if (sub.health.disabled_at) return badge('disabled', 'dead');
  if (sub.health.consecutive_failures) return badge(`${sub.health.consecutive_failures} failing`, 'failed');
  return badge('healthy', 'succeeded');
}

function healthView(ctx, sub, reload) {
  const rows = [
    field('State', healthBadge(sub)),
    field('Consecutive failures', String(sub.health.consecutive_failures ?? 0)),
    field('Failing since', sub.health.first_failure_at ? time(sub.health.first_failure_at) : null),
    field('Disabled at', sub.health.disabled_at ? time(sub.health.disabled_at) : null),
    field('Reason', sub.health.disabled_reason),
  ];
  const enable = sub.health.disabled_at ? h('button', { type: 'button', class: 'primary', onclick: async (event) => {
    event.target.disabled = true;
    try {
      await api(`/api/v1/subscriptions/${encodeURIComponent(sub.name)}/enable`, { method: 'POST' });
      ctx.toast(`${sub.name} is enabled again; its waiting deliveries flow.`);
      await reload();
    } catch (error) {
      ctx.failed(error);
      event.target.disabled = false;
    }
  } }, 'Enable') : null;
  return h('div', { class: 'stack' }, h('dl', { class: 'facts' }, rows), enable);
}

function configView(sub) {
  const { health, inputs, test_event: testEvent, ...config } = sub;
  return h('div', { class: 'stack' },
    h('dl', { class: 'facts' },
      field('Endpoint', h('span', { class: 'mono' }, `${config.method} ${config.url}`)),
      field('Events', config.events.join(', ')),
      field('Auth', config.auth?.type ?? 'none'),
      field('Signing', config.signing?.scheme ?? 'standard'),
      field('Timeout', `${config.timeout} s`),
      field('Ordered', config.ordered ? 'per call' : 'no'),
      field('Success when', `${config.success.status.join(', ')}${config.success.expression ? ` and ${config.success.expression}` : ''}`)),
    h('details', {}, h('summary', {}, 'Full configuration (secrets redacted)'), code(config, 'Configuration')));
}

function verdictView(result) {
  const ok = result.verdict.success;
  return h('div', { class: `verdict ${ok ? 'verdict-ok' : 'verdict-bad'}`, role: 'status' },
    h('span', { class: 'verdict-mark', 'aria-hidden': 'true' }, ok ? '✓' : '✕'),
    h('strong', {}, ok ? 'Success' : 'Not a success'),
    h('span', {}, result.response.status ? ` — HTTP ${result.response.status}` : ' — no answer'),
    h('span', { class: 'muted' }, ` · outcome ${result.verdict.outcome} · ${Math.round(result.response.latency_ms)} ms`));
}

function resultView(result) {
  const req = result.request;
  const headers = Object.entries(req.headers || {});
  const mapped = Object.entries(result.mapped || {});
  return h('div', { class: 'stack', id: 'test-result' },
    verdictView(result),
    h('h4', {}, 'Attributes'),
    h('table', { class: 'table kv', 'aria-label': 'Mapped attributes' }, h('tbody', {}, mapped.map(([k, v]) =>
      h('tr', {}, h('th', { scope: 'row' }, k), h('td', { class: 'mono' }, JSON.stringify(v)))))),
    h('div', { class: 'grid two' },
      h('div', {}, h('h4', {}, 'Request sent'),
        h('p', { class: 'mono request-line' }, h('strong', {}, req.method), ' ', req.url),
        h('table', { class: 'table kv', 'aria-label': 'Request headers' }, h('tbody', {}, headers.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', { class: 'mono' }, v))))),
        req.body ? code(req.body, 'Request body') : h('p', { class: 'muted' }, 'No body.')),
      h('div', {}, h('h4', {}, 'Answer received'),
        h('p', { class: 'request-line' }, h('strong', {}, result.response.status ? `HTTP ${result.response.status}` : 'No answer')),
        result.response.error ? h('p', { class: 'form-error' }, result.response.error) : null,
        result.response.body ? code(result.response.body, 'Response body') : h('p', { class: 'muted' }, 'No body.'))));
}

function testPanel(ctx, sub) {
  const fields = sub.inputs.map((path, i) => {
    const id = `input-${i}`;
    return h('div', { class: 'field' }, h('label', { for: id, class: 'mono' }, path),
      h('input', { id, 'data-path': path, type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'sample value' }));
  });
  const event = h('input', { id: 'test-event', type: 'text', value: sub.test_event, autocomplete: 'off' });
  const run = h('input', { id: 'test-run', type: 'text', placeholder: 'a sample call', autocomplete: 'off' });
  const out = h('div', { class: 'test-output' }, h('p', { class: 'muted' }, 'Fill in the inputs and send a test: the result appears here. Nothing is recorded in the outbox.'));
  const send = h('button', { type: 'submit', class: 'primary' }, 'Send test');
  const form = h('form', { class: 'test-form', 'aria-label': `Test ${sub.name}` },
    h('h3', {}, 'Inputs'),
    fields.length ? fields : h('p', { class: 'muted' }, 'The templates read nothing from the call: there are no inputs.'),
    h('div', { class: 'field' }, h('label', { for: 'test-event' }, 'Event'), event),
    h('div', { class: 'field' }, h('label', { for: 'test-run' }, 'Stored call (workflow_run_id, optional)'), run),
    send);
  form.addEventListener('submit', async (submitEvent) => {
    submitEvent.preventDefault();
    const inputs = {};
    for (const input of form.querySelectorAll('input[data-path]')) if (input.value !== '') inputs[input.dataset.path] = input.value;
    const body = { inputs, event: event.value.trim() || undefined, run: run.value.trim() || undefined };
    send.disabled = true;
    clear(out, h('p', { class: 'muted' }, 'Sending…'));
    try {
      const result = await api(`/api/v1/subscriptions/${encodeURIComponent(sub.name)}/test`, { method: 'POST', body });
      clear(out, resultView(result));
    } catch (error) {
      clear(out, h('p', { class: 'form-error', role: 'alert' }, error.message));
    } finally {
      send.disabled = false;
    }
  });
  return h('div', { class: 'test-panel' }, form, out);
}

export async function listPage(view, ctx) {
  const list = h('ul', { class: 'sub-list', 'aria-label': 'Subscriptions' });
  const detail = h('div', { class: 'stack' });
  view.append(header('Webhooks', 'Subscriptions from the configuration, their health, and a testing panel.'),
    h('div', { class: 'split' }, h('div', {}, list), detail));
  let shown = null;
  const healthBox = h('div', {});

  async function reload() {
    const { subscriptions } = await api('/api/v1/subscriptions');
    if (!ctx.alive) return;
    const name = ctx.route.id || subscriptions[0]?.name;
    const selected = subscriptions.find((s) => s.name === name);
    clear(list, subscriptions.map((s) => h('li', {},
      h('a', { href: route('webhooks', s.name), class: 'sub-item', 'aria-current': s.name === name ? 'true' : null },
        h('span', { class: 'sub-name' }, s.name), healthBadge(s),
        h('span', { class: 'muted small clip' }, s.events.join(', '))))));
    if (!subscriptions.length) list.append(h('li', {}, empty('No webhooks are configured.')));
    if (!selected) {
      clear(detail, ctx.route.id ? empty(`No subscription named ${ctx.route.id}.`) : null);
      return;
    }
    clear(healthBox, healthView(ctx, selected, reload));
    if (shown !== selected.name) {
      shown = selected.name;
      clear(detail, 
        h('div', { class: 'grid two' }, section('Configuration', configView(selected)), section('Health', healthBox)),
        section('Test', testPanel(ctx, selected)),
        h('p', {}, h('a', { href: `#/deliveries?subscription=${encodeURIComponent(selected.name)}` }, `Deliveries to ${selected.name} →`)));
    }
  }
  await ctx.poll(reload, 5000);
}
