// Calls: the newest first with a state filter, updated while calls progress; a call's page.
import { api, local, query } from './api.js';
import { ago, badge, changes, clear, clock, code, empty, field, h, header, link, section, select, time } from './dom.js';

export const STATES = ['initiated', 'ringing', 'answered', 'completed', 'busy', 'no-answer', 'failed', 'canceled'];
const TERMINAL = new Set(['completed', 'busy', 'no-answer', 'failed', 'canceled']);

function duration(call) {
  if (typeof call.duration === 'number') return `${call.duration} s`;
  return TERMINAL.has(call.state) ? '—' : 'live';
}

function callRow(call) {
  return h('tr', {},
    h('td', {}, link(call.workflow_run_id, 'calls', call.workflow_run_id)),
    h('td', {}, badge(call.state)),
    h('td', { class: 'mono' }, call.from ?? '—'),
    h('td', { class: 'mono' }, call.to ?? '—'),
    h('td', {}, call.direction ?? '—'),
    h('td', {}, call.provider ?? '—'),
    h('td', {}, duration(call)),
    h('td', { title: call.created_at }, ago(call.created_at)));
}

export async function listPage(view, ctx) {
  let state = ctx.route.params.get('state') || '';
  let limit = 50;
  let next = null;
  const body = h('tbody', {});
  const table = h('table', { class: 'table', 'aria-label': 'Calls' },
    h('thead', {}, h('tr', {}, ['Run', 'State', 'From', 'To', 'Direction', 'Provider', 'Duration', 'Created'].map((t) => h('th', { scope: 'col' }, t)))),
    body);
  const more = h('button', { type: 'button', class: 'ghost', hidden: true, onclick: () => { limit = Math.min(500, limit + 50); refresh(); } }, 'Load more');
  const count = h('span', { class: 'muted' });
  const filter = select('State', 'call-state', [['', 'All states'], ...STATES.map((s) => [s, s])], state, (value) => {
    state = value;
    ctx.setParams({ state });
    refresh();
  });
  view.append(header('Calls', 'Every call the gateway has seen, newest first. Updates live.', filter),
    h('div', { class: 'card flush' }, table, h('div', { class: 'table-foot' }, count, more)));

  const changed = changes();
  async function refresh() {
    const page = await api(`/api/v1/calls${query({ state, limit })}`);
    // Rows are rebuilt when a call changed (or every 10 s, for their ages), not on every poll.
    // (Not the whole page: its recording links are signed afresh on every read.)
    const rows = page.calls.map((c) => [c.workflow_run_id, c.state, c.updated_at]);
    if (!ctx.alive || !changed([state, limit, rows, page.next_cursor, Math.floor(Date.now() / 10000)])) return;
    next = page.next_cursor;
    clear(body, ...page.calls.map(callRow));
    if (!page.calls.length) body.append(h('tr', {}, h('td', { colspan: 8 }, empty(state ? `No ${state} calls.` : 'No calls yet.'))));
    count.textContent = `${page.calls.length} call${page.calls.length === 1 ? '' : 's'}`;
    more.hidden = !next || limit >= 500;
  }
  await ctx.poll(refresh, 2000);
}

function contextBlock(title, value) {
  const emptyValue = !value || (typeof value === 'object' && !Object.keys(value).length);
  return h('div', { class: 'stack' }, h('h3', {}, title), emptyValue ? empty('Nothing.') : code(value, title));
}

function timelineTable(entries) {
  if (!entries.length) return empty('No timeline entries.');
  return h('table', { class: 'table compact', 'aria-label': 'Timeline' },
    h('thead', {}, h('tr', {}, ['Received', 'Source', 'Kind', 'Outcome', 'Provider status', 'State', 'Data'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, entries.map((e) => h('tr', {},
      h('td', { class: 'nowrap mono' }, clock(e.received_at)),
      h('td', {}, e.source),
      h('td', {}, e.kind),
      h('td', {}, badge(e.outcome)),
      h('td', {}, e.raw_status ?? '—'),
      h('td', {}, e.state ? badge(e.state) : '—'),
      h('td', {}, e.data && Object.keys(e.data).length ? h('details', {}, h('summary', {}, 'data'), code(e.data)) : '—')))));
}

function eventsTable(events) {
  if (!events.length) return empty('No events yet.');
  return h('table', { class: 'table compact', 'aria-label': 'Events' },
    h('thead', {}, h('tr', {}, ['Seq', 'Event', 'Time', 'Id', 'Payload'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, events.map((e) => h('tr', {},
      h('td', {}, String(e.seq)),
      h('td', {}, h('strong', {}, e.type)),
      h('td', { class: 'nowrap mono' }, clock(e.timestamp)),
      h('td', { class: 'mono small' }, e.id),
      h('td', {}, h('details', {}, h('summary', {}, 'envelope'), code(e)))))));
}

export function deliveriesTable(rows, { showRun = false } = {}) {
  if (!rows.length) return empty('No deliveries.');
  const heads = ['Delivery', 'Event', 'Subscription', ...(showRun ? ['Run'] : []), 'Status', 'Attempts', 'Last answer', 'Updated'];
  return h('table', { class: 'table compact', 'aria-label': 'Deliveries' },
    h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows.map((d) => h('tr', {},
      h('td', { class: 'mono small' }, link(d.id, 'deliveries', d.id)),
      h('td', {}, d.event_type ?? '—'),
      h('td', {}, d.subscription),
      showRun ? h('td', { class: 'mono small' }, d.workflow_run_id ? link(d.workflow_run_id, 'calls', d.workflow_run_id) : '—') : null,
      h('td', {}, badge(d.status)),
      h('td', {}, String(d.attempts)),
      h('td', { class: 'clip' }, d.last_status ? `HTTP ${d.last_status}` : (d.last_error ?? '—')),
      h('td', { title: d.updated_at }, ago(d.updated_at))))));
}

async function transcriptLines(call, timeline) {
  const url = call.media?.transcript_url;
  if (url) {
    try {
      const response = await fetch(local(url), { credentials: 'omit', cache: 'no-store' });
      if (response.ok) return (await response.json()).lines || [];
    } catch { /* fall back to the timeline */ }
  }
  return timeline.filter((e) => e.kind === 'transcript')
    .map((e) => ({ role: e.data?.role, text: e.data?.text, at: e.received_at }));
}

function transcriptBlock(lines) {
  if (!lines.length) return empty('No transcript for this call.');
  return h('ol', { class: 'transcript', 'aria-label': 'Transcript' }, lines.map((line) => h('li', { class: `line line-${line.role === 'agent' ? 'agent' : 'caller'}` },
    h('span', { class: 'who' }, line.role ?? '—'), h('span', { class: 'said' }, line.text ?? ''))));
}

function recordingBlock(call) {
  const url = call.media?.recording_url;
  if (!url) return empty(call.media?.started ? 'No recording: recording is off for this call, or its media has not ended.' : 'No recording: the call had no media.');
  return h('div', { class: 'stack' },
    h('audio', { controls: true, preload: 'metadata', src: local(url), 'aria-label': 'Recording' }),
    h('p', { class: 'muted small' }, 'Stereo WAV: caller left, agent right. The link is signed and expires.'));
}

export async function callPage(view, ctx) {
  const runId = ctx.route.id;
  const head = h('div', {});
  const summary = h('div', {});
  const media = h('div', { class: 'grid two' });
  const timeline = h('div', {});
  const events = h('div', {});
  const deliveries = h('div', {});
  view.append(h('p', { class: 'crumbs' }, link('Calls', 'calls'), ' / ', runId), head, summary, media,
    section('Timeline', timeline), section('Events', events), section('Deliveries', deliveries));
  let lastState = null;
  let finished = false;
  const changed = changes();

  async function refresh() {
    if (finished) return;
    const [call, evts, dels] = await Promise.all([
      api(`/api/v1/calls/${encodeURIComponent(runId)}`),
      api(`/api/v1/calls/${encodeURIComponent(runId)}/events?limit=500`),
      api(`/api/v1/deliveries${query({ run: runId, limit: 200 })}`),
    ]);
    if (!ctx.alive || !changed([call.state, call.updated_at, call.timeline?.length, evts.events.length, dels.deliveries])) return;
    clear(head, header(`${call.from ?? 'unknown'} → ${call.to ?? 'unknown'}`, `${call.direction ?? ''} call through ${call.provider}`, badge(call.state)));
    clear(summary, h('section', { class: 'card' }, h('dl', { class: 'facts' },
      field('Run', h('span', { class: 'mono' }, call.workflow_run_id)),
      field('State', badge(call.state)),
      field('From', call.from), field('To', call.to),
      field('Workflow', call.workflow_id), field('User', call.user_id),
      field('Provider call', call.provider_call_id),
      field('Started', time(call.started_at)), field('Answered', time(call.answered_at)), field('Ended', time(call.ended_at)),
      field('Duration', typeof call.duration === 'number' ? `${call.duration} s` : null),
      field('Answered by', call.answered_by), field('Voicemail', call.voicemail === null || call.voicemail === undefined ? null : String(call.voicemail))),
    h('div', { class: 'grid two' }, contextBlock('Initial context', call.initial_context), contextBlock('Gathered context', call.gathered_context))));
    const ended = TERMINAL.has(call.state) && (!call.media?.started || call.media?.ended);
    if (call.state !== lastState || ended) {
      const lines = await transcriptLines(call, call.timeline || []);
      if (!ctx.alive) return;
      clear(media, section('Recording', recordingBlock(call)), section('Transcript', transcriptBlock(lines)));
      lastState = call.state;
    }
    clear(timeline, timelineTable(call.timeline || []));
    clear(events, eventsTable(evts.events));
    clear(deliveries, deliveriesTable(dels.deliveries));
    finished = ended && dels.deliveries.every((d) => d.status !== 'pending');
  }
  await ctx.poll(refresh, 2000);
}
