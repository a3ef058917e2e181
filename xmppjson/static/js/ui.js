// The page: renders the Chat model and turns what the user does into calls on it.
//
// Everything shown that came from another user (names, statuses, message bodies) goes in with
// textContent, never innerHTML: nothing a contact sends can inject markup into the page.

import { describe } from './chat.js';

const $ = (id) => document.getElementById(id);

/** Create an element with properties and children (strings become text). */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key in node && !key.startsWith('aria') && !key.startsWith('data')) node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const SHOW_WORDS = {
  '': 'Available',
  chat: 'Free to chat',
  away: 'Away',
  xa: 'Extended away',
  dnd: 'Do not disturb',
};

// -- notices -------------------------------------------------------------------------------

const INFO_LIFETIME_MS = 8000;
const MAX_NOTICES = 6;

/**
 * Tell the user something: errors stay until dismissed (role "alert", read out at once),
 * information goes away by itself (role "status").  The same text twice in a row is counted
 * instead of stacked, so a burst of identical failures stays readable.
 */
export function notify(text, level = 'error') {
  const list = $('notice-list');
  const existing = [...list.children].find((li) => li.dataset.text === text);
  if (existing) {
    const count = Number(existing.dataset.count) + 1;
    existing.dataset.count = String(count);
    existing.querySelector('.count').textContent = ` (×${count})`;
    return;
  }
  const item = h('li', {
    class: `notice ${level}`,
    role: level === 'error' ? 'alert' : 'status',
    'data-text': text,
    'data-count': '1',
  },
  h('span', { class: 'notice-text', text }),
  h('span', { class: 'count' }),
  h('button', {
    type: 'button',
    class: 'dismiss',
    'aria-label': 'Dismiss notification',
    onclick: () => item.remove(),
  }, '×'));
  list.append(item);
  while (list.children.length > MAX_NOTICES) list.firstElementChild.remove();
  if (level !== 'error') setTimeout(() => item.remove(), INFO_LIFETIME_MS);
}

export function clearNotices() {
  $('notice-list').replaceChildren();
}

// -- logged out ----------------------------------------------------------------------------

/** Show an ApiError on a form: the sentence, and each field the server named marked invalid. */
function showFormError(form, errorNode, error) {
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  errorNode.textContent = describe(error);
  for (const { field } of error.fieldErrors || []) {
    const input = form.elements[field];
    if (input) input.setAttribute('aria-invalid', 'true');
  }
  const first = form.querySelector('[aria-invalid="true"]');
  if (first) first.focus();
}

export class AuthView {
  /**
   * @param {object} handlers
   * @param {(jid: string, password: string) => Promise} handlers.login
   * @param {(jid: string, password: string) => Promise} handlers.register
   */
  constructor({ login, register }) {
    this.root = $('auth-view');
    this.bind($('login-form'), $('login-error'), login);
    this.bind($('register-form'), $('register-error'), register);
  }

  bind(form, errorNode, action) {
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const jid = form.elements.jid.value.trim();
      const password = form.elements.password.value;
      if (!jid || !password) {
        showFormError(form, errorNode, new Error('Enter a username and a password.'));
        return;
      }
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      errorNode.textContent = '';
      try {
        await action(jid, password);
        form.reset();
      } catch (e) {
        showFormError(form, errorNode, e);
      } finally {
        button.disabled = false;
      }
    });
  }

  show() {
    this.root.hidden = false;
    document.title = 'xmppjson chat';
    $('login-jid').focus();
  }

  hide() {
    this.root.hidden = true;
    $('login-error').textContent = '';
    $('register-error').textContent = '';
  }
}

// -- logged in -----------------------------------------------------------------------------

const CONNECTION_WORDS = {
  connecting: 'Connecting…',
  online: 'Connected',
  stopped: 'Disconnected',
};

export class ChatView {
  /**
   * @param {Chat} chat
   * @param {ChatStream} stream  for the connection state only
   * @param {object} handlers  {logout(), profile(), userExists(localpart) -> Promise<boolean>}
   */
  constructor(chat, stream, { logout, profile, userExists }) {
    this.chat = chat;
    this.userExists = userExists;
    this.root = $('chat-view');
    this.messageNodes = new Map(); // message key -> <li>, for the open conversation
    this.renderedPeer = null;
    this.retryTimer = null;
    this.abort = new AbortController(); // removes every listener at logout
    const signal = this.abort.signal;
    const on = (target, type, fn) => target.addEventListener(type, fn, { signal });

    $('me-jid').textContent = chat.me;
    $('own-show').value = chat.ownPresence.show;
    $('own-status').value = chat.ownPresence.status;

    on(chat, 'roster', () => this.renderContacts());
    on(chat, 'unread', () => { this.renderContacts(); this.renderTitle(); });
    on(chat, 'conversation', (e) => {
      if (e.detail.peer === chat.openPeer) this.renderMessages();
      this.renderContacts();
    });
    on(chat, 'typing', (e) => {
      if (e.detail.peer === chat.openPeer) this.renderTyping();
    });
    on(chat, 'incoming', (e) => this.announce(e.detail));
    on(chat, 'notice', (e) => notify(e.detail.text, e.detail.level));
    on(stream, 'state', (e) => this.renderConnection(e.detail));

    on($('presence-form'), 'submit', (event) => {
      event.preventDefault();
      chat.setPresence($('own-show').value, $('own-status').value.trim());
      notify(`Your presence is now: ${SHOW_WORDS[$('own-show').value]}.`, 'info');
    });
    on($('own-show'), 'change', () => chat.setPresence($('own-show').value, $('own-status').value.trim()));
    on($('logout-button'), 'click', logout);
    on($('profile-button'), 'click', profile);
    on($('add-contact-form'), 'submit', (event) => this.addContact(event));
    on($('contact-list'), 'keydown', (event) => this.moveBetweenContacts(event));
    on($('back-button'), 'click', () => this.showContacts());
    on($('composer'), 'submit', (event) => {
      event.preventDefault();
      this.send();
    });
    on($('composer-input'), 'keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      } else if (event.key === 'Escape') {
        this.showContacts();
      }
    });
    on($('composer-input'), 'input', () => {
      if (chat.openPeer) chat.typing(chat.openPeer, $('composer-input').value);
    });
    on(document, 'visibilitychange', () => {
      chat.markRead();
      this.renderTitle();
    });

    this.renderContacts();
    this.showContacts();
  }

  show() {
    this.root.hidden = false;
  }

  /** Logout: forget the listeners and the rendered state, hide the view. */
  destroy() {
    this.abort.abort();
    clearInterval(this.retryTimer);
    this.root.hidden = true;
    for (const id of ['contact-list', 'request-list', 'messages']) $(id).replaceChildren();
    $('composer-input').value = '';
    $('typing').textContent = '';
    $('conversation-pane').hidden = true;
    $('no-conversation').hidden = false;
    document.title = 'xmppjson chat';
  }

  // -- connection ----------------------------------------------------------------------

  renderConnection({ state, retryIn }) {
    const node = $('connection');
    node.dataset.state = state;
    clearInterval(this.retryTimer);
    if (state !== 'waiting') {
      node.textContent = CONNECTION_WORDS[state] || state;
      return;
    }
    // Count down so the user knows the client is working on it, not stuck.
    const until = Date.now() + retryIn;
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      node.textContent = `Offline; retrying in ${seconds} s`;
    };
    tick();
    this.retryTimer = setInterval(tick, 1000);
  }

  // -- contacts ------------------------------------------------------------------------

  presenceWords(jid) {
    const chat = this.chat;
    const item = chat.roster.get(jid);
    const presence = chat.presenceOf(jid);
    if (presence) {
      return { show: presence.show || 'available', text: SHOW_WORDS[presence.show] || 'Available', status: presence.status };
    }
    if (!item) return { show: 'stranger', text: 'Not in your contacts', status: '' };
    if (item.ask === 'subscribe' && !['to', 'both'].includes(item.subscription)) {
      return { show: 'pending', text: 'Waiting for them to accept', status: '' };
    }
    if (!['to', 'both'].includes(item.subscription)) {
      return { show: 'unknown', text: 'Presence not shared', status: '' };
    }
    return { show: 'offline', text: 'Offline', status: '' };
  }

  renderContacts() {
    const chat = this.chat;
    const requests = [...chat.requests];
    $('requests').hidden = requests.length === 0;
    $('request-list').replaceChildren(...requests.map((jid) => h('li', { class: 'request', 'data-jid': jid },
      h('span', { class: 'request-text' }, h('strong', { text: jid }), ' wants to add you as a contact.'),
      h('span', { class: 'request-actions' },
        h('button', { type: 'button', class: 'primary accept', onclick: () => chat.acceptRequest(jid) },
          'Accept', h('span', { class: 'visually-hidden', text: ` ${jid}` })),
        h('button', { type: 'button', class: 'decline', onclick: () => chat.declineRequest(jid) },
          'Decline', h('span', { class: 'visually-hidden', text: ` ${jid}` }))))));

    const people = chat.people();
    $('no-contacts').hidden = people.length > 0;
    const focused = document.activeElement && document.activeElement.closest('#contact-list li');
    const focusedJid = focused && focused.dataset.jid;
    $('contact-list').replaceChildren(...people.map((jid) => this.contactItem(jid)));
    if (focusedJid) {
      const again = $('contact-list').querySelector(`li[data-jid="${CSS.escape(focusedJid)}"] .contact-open`);
      if (again) again.focus();
    }
    if (chat.openPeer) this.renderPeerHeader();
  }

  contactItem(jid) {
    const chat = this.chat;
    const name = chat.name(jid);
    const words = this.presenceWords(jid);
    const conversation = chat.conversations.get(jid);
    const unread = conversation ? conversation.unread : 0;
    const inRoster = chat.roster.has(jid);
    const open = h('button', {
      type: 'button',
      class: 'contact-open',
      'aria-current': chat.openPeer === jid ? 'true' : 'false',
      onclick: () => this.openConversation(jid),
    },
    h('span', { class: `dot show-${words.show}`, 'aria-hidden': 'true' }),
    h('span', { class: 'contact-main' },
      h('span', { class: 'contact-name', text: name }),
      h('span', { class: 'contact-presence', 'data-show': words.show },
        words.text, words.status ? ` — ${words.status}` : '')),
    unread ? h('span', { class: 'badge', 'data-unread': String(unread) },
      String(unread), h('span', { class: 'visually-hidden', text: ' unread' })) : null);
    const actions = inRoster
      ? h('button', {
        type: 'button',
        class: 'contact-remove',
        'aria-label': `Remove ${name} from contacts`,
        title: `Remove ${name}`,
        onclick: () => this.removeContact(jid, name),
      }, '×')
      : h('button', {
        type: 'button',
        class: 'contact-add',
        'aria-label': `Add ${jid} to contacts`,
        onclick: () => this.run(chat.addContact(jid, ''), `Could not add ${jid}`),
      }, '+');
    return h('li', { class: 'contact', 'data-jid': jid, 'data-show': words.show }, open, actions);
  }

  /** Up/Down (and Home/End) move the focus along the contact list, as in any list box. */
  moveBetweenContacts(event) {
    const buttons = [...$('contact-list').querySelectorAll('.contact-open')];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    const next = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: buttons.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    buttons[Math.max(0, Math.min(buttons.length - 1, next))].focus();
  }

  async addContact(event) {
    event.preventDefault();
    const form = event.target;
    const jid = this.chat.normalizeJid(form.elements.jid.value);
    const name = form.elements.name.value.trim();
    if (!jid || jid.startsWith('@')) {
      notify('Enter the address of the contact to add.');
      form.elements.jid.focus();
      return;
    }
    if (jid === this.chat.me) {
      notify('That is your own address.');
      return;
    }
    const [localpart, domain] = jid.split('@');
    if (domain === this.chat.me.split('@')[1]) {
      // Asking first gives "no such user" in words; the XMPP answer would be a bare refusal.
      let exists = true;
      try {
        exists = await this.userExists(localpart);
      } catch {
        exists = true; // cannot tell: let the server decide
      }
      if (!exists) {
        notify(`There is no user ${jid} on this server.`);
        form.elements.jid.focus();
        return;
      }
    }
    const done = await this.run(this.chat.addContact(jid, name), `Could not add ${jid}`);
    if (done) {
      form.reset();
      notify(`Asked ${jid} to share their presence with you.`, 'info');
    }
  }

  async removeContact(jid, name) {
    if (!window.confirm(`Remove ${name} from your contacts? You will stop seeing each other's presence.`)) return;
    await this.run(this.chat.removeContact(jid), `Could not remove ${name}`);
  }

  /** Await an action; on failure tell the user what failed and why.  Resolves to success. */
  async run(promise, what) {
    try {
      await promise;
      return true;
    } catch (e) {
      notify(`${what}: ${describe(e)}`);
      return false;
    }
  }

  // -- the conversation ----------------------------------------------------------------

  async openConversation(peer) {
    await this.chat.open(peer);
    this.root.dataset.pane = 'conversation';
    $('no-conversation').hidden = true;
    $('conversation-pane').hidden = false;
    if (this.renderedPeer !== peer) {
      $('composer-input').value = '';
      $('messages').replaceChildren();
      this.messageNodes.clear();
      this.renderedPeer = peer;
    }
    this.renderPeerHeader();
    this.renderMessages();
    this.renderTyping();
    this.renderContacts();
    this.renderTitle();
    $('composer-input').focus();
  }

  /** Narrow screens show one pane at a time: back to the list. */
  showContacts() {
    this.root.dataset.pane = 'contacts';
    const current = this.chat.openPeer
      && $('contact-list').querySelector(`li[data-jid="${CSS.escape(this.chat.openPeer)}"] .contact-open`);
    if (current && getComputedStyle($('contact-list')).display !== 'none') current.focus();
  }

  renderPeerHeader() {
    const peer = this.chat.openPeer;
    const words = this.presenceWords(peer);
    $('peer-name').textContent = this.chat.name(peer);
    $('peer-presence').textContent = `${peer} · ${words.text}${words.status ? ` — ${words.status}` : ''}`;
    $('peer-presence').dataset.show = words.show;
    $('composer-label').textContent = `Message to ${this.chat.name(peer)}`;
  }

  renderMessages() {
    const conversation = this.chat.conversations.get(this.chat.openPeer);
    if (!conversation) return;
    const list = $('messages');
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    // Keyed update: existing rows are updated in place and new ones inserted, so the log
    // (role="log") only announces messages that are really new.
    let previous = null;
    for (const message of conversation.messages) {
      let node = this.messageNodes.get(message.key);
      if (!node) {
        node = this.messageItem(message);
        this.messageNodes.set(message.key, node);
      } else {
        this.updateStatus(node, message);
      }
      const wanted = previous ? previous.nextSibling : list.firstChild;
      if (wanted !== node) list.insertBefore(node, wanted);
      previous = node;
    }
    if (nearBottom || conversation.messages.at(-1)?.dir === 'out') list.scrollTop = list.scrollHeight;
  }

  messageItem(message) {
    const time = new Date(message.time);
    const who = message.dir === 'out' ? 'You' : this.chat.name(message.from);
    const node = h('li', {
      class: `message ${message.dir}`,
      'data-id': message.id || '',
      'data-key': message.key,
    },
    h('span', { class: 'visually-hidden', text: `${who}: ` }),
    h('p', { class: 'body', text: message.body }),
    h('p', { class: 'meta' },
      h('time', { datetime: time.toISOString(), text: formatTime(time) }),
      message.delayed ? h('span', { class: 'delayed', text: ' · sent while you were offline' }) : null,
      h('span', { class: 'status' })));
    this.updateStatus(node, message);
    return node;
  }

  updateStatus(node, message) {
    if (message.dir !== 'out') return;
    const words = { sending: ' · sending…', sent: ' · sent', failed: ` · not delivered: ${message.error || ''}` };
    node.dataset.status = message.status;
    node.querySelector('.status').textContent = words[message.status] || '';
  }

  renderTyping() {
    const peer = this.chat.openPeer;
    const state = peer ? this.chat.peerState(peer) : null;
    const node = $('typing');
    node.dataset.state = state || '';
    node.textContent = state === 'composing'
      ? `${this.chat.name(peer)} is typing…`
      : state === 'paused' ? `${this.chat.name(peer)} stopped typing.` : '';
  }

  async send() {
    const input = $('composer-input');
    const body = input.value;
    const peer = this.chat.openPeer;
    if (!peer || !body.trim()) return;
    input.value = '';
    try {
      await this.chat.sendMessage(peer, body);
    } catch (e) {
      input.value = body; // give the text back rather than lose it
      notify(`Could not send your message: ${describe(e)}`);
    }
    input.focus();
  }

  /** Read out a message that arrived in a conversation that is not on screen. */
  announce({ peer, message, seen }) {
    if (seen) return; // the log of the open conversation announces it
    $('announcer').textContent = `New message from ${this.chat.name(peer)}: ${message.body}`;
  }

  renderTitle() {
    const total = this.chat.unreadTotal();
    document.title = total ? `(${total}) xmppjson chat` : 'xmppjson chat';
  }
}

function formatTime(date) {
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const options = sameDay
    ? { hour: '2-digit', minute: '2-digit' }
    : { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' };
  return date.toLocaleString(undefined, options);
}

// -- profile -------------------------------------------------------------------------------

/** The editable profile fields (docs/rest.md), with the words a form shows for them. */
export const PROFILE_FIELDS = [
  ['full_name', 'Full name', 'name'],
  ['nick_name', 'Nickname', 'nickname'],
  ['email', 'Email', 'email'],
  ['phone', 'Phone', 'tel'],
  ['www', 'Web site', 'url'],
  ['birthday', 'Birthday', 'bday'],
  ['company', 'Company', 'organization'],
  ['department', 'Department', 'off'],
  ['position', 'Position', 'organization-title'],
  ['role', 'Role', 'off'],
  ['street', 'Street', 'address-line1'],
  ['streer_2', 'Street, second line', 'address-line2'], // sic: the API's spelling
  ['city', 'City', 'address-level2'],
  ['state', 'State or region', 'address-level1'],
  ['zip_code', 'Postal code', 'postal-code'],
  ['country', 'Country', 'country-name'],
  ['about', 'About you', 'off'],
];

export class ProfileDialog {
  /** @param {Api} api */
  constructor(api) {
    this.api = api;
    this.dialog = $('profile-dialog');
    this.form = $('profile-form');
    this.loaded = {};
    $('profile-fields').replaceChildren(...PROFILE_FIELDS.map(([name, label, autocomplete]) => {
      const id = `profile-${name}`;
      const input = name === 'about'
        ? h('textarea', { id, name, rows: 3 })
        : h('input', { id, name, autocomplete });
      return h('div', { class: 'field' }, h('label', { for: id, text: label }), input,
        h('p', { class: 'field-error', id: `${id}-error` }));
    }));
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.save();
    });
    $('profile-cancel').addEventListener('click', () => this.dialog.close());
  }

  async open() {
    $('profile-error').textContent = '';
    this.clearFieldErrors();
    try {
      this.loaded = await this.api.me();
    } catch (e) {
      notify(`Could not load your profile: ${describe(e)}`);
      return;
    }
    for (const [name] of PROFILE_FIELDS) this.form.elements[name].value = this.loaded[name] || '';
    this.dialog.showModal();
    this.form.elements.full_name.focus();
  }

  clearFieldErrors() {
    for (const [name] of PROFILE_FIELDS) {
      this.form.elements[name].removeAttribute('aria-invalid');
      this.form.elements[name].removeAttribute('aria-describedby');
      $(`profile-${name}-error`).textContent = '';
    }
  }

  async save() {
    this.clearFieldErrors();
    // Only what changed goes out; an emptied field is cleared (null), as PATCH /me expects.
    const changes = {};
    for (const [name] of PROFILE_FIELDS) {
      const value = this.form.elements[name].value.trim();
      if (value !== (this.loaded[name] || '')) changes[name] = value || null;
    }
    if (Object.keys(changes).length === 0) {
      this.dialog.close();
      return;
    }
    try {
      this.loaded = await this.api.updateProfile(changes);
      this.dialog.close();
      notify('Your profile is saved.', 'info');
    } catch (e) {
      $('profile-error').textContent = `Your profile was not saved: ${describe(e)}`;
      for (const { field, message } of e.fieldErrors || []) {
        const input = this.form.elements[field];
        if (!input) continue;
        input.setAttribute('aria-invalid', 'true');
        input.setAttribute('aria-describedby', `profile-${field}-error`);
        $(`profile-${field}-error`).textContent = message;
      }
    }
  }
}
