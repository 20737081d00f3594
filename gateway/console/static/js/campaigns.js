// Campaigns: progress and statistics, Pause / Resume / Cancel.
import { api, ApiError } from './api.js';
import { badge, changes, clear, empty, field, h, header, time } from './dom.js';

const ACTIONS = { running: ['Pause', 'Cancel'], paused: ['Resume', 'Cancel'] };

function meter(campaign) {
  const total = campaign.statistics.total || 0;
  const done = campaign.statistics.processed || 0;
  return h('div', { class: 'progress-row' },
    h('progress', { max: String(Math.max(total, 1)), value: String(done), 'aria-label': `${campaign.name || campaign.id} progress` }),
    h('span', { class: 'muted' }, `${done} of ${total} · ${campaign.statistics.percentComplete}%`));
}

function card(ctx, campaign, reload) {
  const p = campaign.progress;
  const buttons = (ACTIONS[campaign.status] || []).map((label) => h('button', {
    type: 'button', class: label === 'Cancel' ? 'danger' : 'primary', 'aria-label': label,
    onclick: async (event) => {
      if (label === 'Cancel' && !window.confirm(`Cancel campaign ${campaign.name || campaign.id}? Contacts not yet called are skipped.`)) return;
      event.target.disabled = true;
      try {
        await api(`/api/v1/campaigns/${encodeURIComponent(campaign.id)}/${label.toLowerCase()}`, { method: 'POST' });
        ctx.toast(`${campaign.name || campaign.id}: ${label.toLowerCase()} done.`);
        await reload();
      } catch (error) {
        ctx.failed(error);
        event.target.disabled = false;
      }
    },
  }, label));
  return h('article', { class: 'card campaign' },
    h('header', { class: 'attempt-head' }, h('h2', {}, campaign.name || campaign.id), badge(campaign.status),
      h('div', { class: 'actions' }, buttons)),
    meter(campaign),
    h('div', { class: 'stats' },
      [['Succeeded', campaign.statistics.succeeded], ['Failed', campaign.statistics.failed], ['Success rate', `${campaign.statistics.successRate}%`],
        ['Pending', p.pending], ['In progress', p.in_progress], ['Waiting retry', p.waiting_retry], ['Calls placed', p.calls_placed],
        ['Minutes used', p.minutes_used]].map(([label, value]) => h('div', { class: 'stat' }, h('span', { class: 'stat-value' }, String(value ?? 0)), h('span', { class: 'stat-label' }, label)))),
    h('dl', { class: 'facts' }, field('Id', h('span', { class: 'mono' }, campaign.id)), field('Workflow', campaign.workflow_id),
      field('From', campaign.from), field('Provider', campaign.provider), field('Created', time(campaign.timestamps.createdAt)),
      field('Completed', time(campaign.timestamps.completedAt)),
      campaign.error ? field('Error', campaign.error.message) : null));
}

export async function listPage(view, ctx) {
  const list = h('div', { class: 'stack' });
  view.append(header('Campaigns', 'Outbound campaigns: progress, statistics and controls.'), list);
  const changed = changes();
  async function reload() {
    let page;
    try {
      page = await api('/api/v1/campaigns?limit=100');
    } catch (error) {
      if (error instanceof ApiError && error.status === 501) {
        clear(list, empty(error.message));
        return;
      }
      throw error;
    }
    if (!ctx.alive || !changed(page)) return;
    clear(list, page.campaigns.length ? page.campaigns.map((c) => card(ctx, c, reload)) : empty('No campaigns yet.'));
  }
  await ctx.poll(reload, 3000);
}
