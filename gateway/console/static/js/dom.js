// DOM helpers. Everything shown from the API is text: h() never parses HTML, it only creates
// elements, sets attributes from the caller's literals and appends text nodes.

/** h('div', {class: 'x', onclick: f}, 'text', child) -> an element. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'value') el.value = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children (nodes, strings, arrays, nulls skipped) as nodes and text nodes. */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace el's children with `children` (as append() takes them). */
export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** An internal link: the hash route of a page, the segments URI-encoded. */
export function route(...segments) {
  return '#/' + segments.map((s) => encodeURIComponent(String(s))).join('/');
}

export function link(text, ...segments) {
  return h('a', { href: route(...segments) }, text);
}

export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function ago(iso) {
  if (!iso) return '';
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (!Number.isFinite(seconds)) return '';
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** The time of day with milliseconds (for timelines), the full date as its title. */
export function clock(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const text = date.toLocaleTimeString(undefined, { hour12: false }) + '.' + String(date.getMilliseconds()).padStart(3, '0');
  return h('time', { datetime: iso, title: when(iso) }, text);
}

export function time(iso) {
  return h('time', { datetime: iso || null, title: iso ? when(iso) : null }, iso ? `${when(iso)}` : '—');
}

/** A state or status as a coloured pill. */
export function badge(text, kind = text) {
  return h('span', { class: `badge badge-${String(kind).replace(/[^a-z0-9_-]/gi, '')}` }, text ?? '—');
}

/** JSON (or text) in a <pre>, pretty-printed. */
export function code(value, label) {
  let text = value;
  if (typeof value !== 'string') text = JSON.stringify(value, null, 2);
  else {
    try { text = JSON.stringify(JSON.parse(value), null, 2); } catch { /* not JSON: as is */ }
  }
  return h('pre', { class: 'code', 'aria-label': label || null, tabindex: '0' }, text ?? '');
}

export function field(label, value) {
  return h('div', { class: 'fact' }, h('dt', {}, label), h('dd', {}, value === null || value === undefined || value === '' ? '—' : value));
}

export function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', {}, title), ...children);
}

export function empty(text) {
  return h('p', { class: 'empty' }, text);
}

export function header(title, subtitle, ...actions) {
  return h('header', { class: 'page-head' },
    h('div', {}, h('h1', {}, title), subtitle ? h('p', { class: 'muted subtitle' }, subtitle) : null),
    h('div', { class: 'actions' }, ...actions));
}

/** A <select> with a visible label; options are [value, text] pairs. */
export function select(label, id, options, current, onchange) {
  return h('label', { class: 'filter', for: id }, label,
    h('select', { id, onchange: (e) => onchange(e.target.value) },
      options.map(([value, text]) => h('option', { value, selected: value === (current || '') }, text))));
}

/** A function that answers whether `value` differs from what it was given last (by its JSON):
 * polled pages re-render only what changed, so open <details> and focus stay put. */
export function changes() {
  let last = null;
  return (value) => {
    const text = JSON.stringify(value);
    if (text === last) return false;
    last = text;
    return true;
  };
}
