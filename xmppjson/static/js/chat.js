// The chat model: roster, presence, subscription requests, conversations, unread counts and
// typing state, kept in step with the server through a ChatStream.  It knows nothing about the
// page; ui.js listens to its events and calls its methods.
//
// Events (CustomEvent, details in `event.detail`):
//  - `roster`        contacts, their presence or the pending requests changed
//  - `conversation`  {peer} a conversation's messages changed
//  - `typing`        {peer, state} the peer's chat state: "composing", "paused" or null
//  - `incoming`      {peer, message} a new message from someone arrived (for announcements)
//  - `unread`        unread counts changed
//  - `notice`        {text, level: "error" | "info"} something the user must be told
//  - `ownpresence`   the user's own show/status changed

import * as F from './frames.js';

/** How long the peer's "is typing" is believed without news (XEP-0085 suggests a fallback). */
const COMPOSING_STALE_MS = 30000;

/** Presence `show` from most to least reachable, to pick a contact's best resource. */
const SHOW_RANK = { chat: 0, '': 1, away: 2, xa: 3, dnd: 4 };

export class Chat extends EventTarget {
  /**
   * @param {ChatStream} stream
   * @param {object} history  see history.js for the interface
   * @param {object} options
   * @param {string} options.me  the user's bare JID
   * @param {number} options.typingIdle  ms without typing before "paused" is sent
   * @param {() => boolean} options.isVisible  whether the user can see the page right now
   */
  constructor(stream, history, { me, typingIdle = 5000, isVisible = () => true } = {}) {
    super();
    this.stream = stream;
    this.history = history;
    this.me = me;
    this.typingIdle = typingIdle;
    this.isVisible = isVisible;

    /** bare JID -> {jid, name, subscription, ask, groups} */
    this.roster = new Map();
    this.rosterLoaded = false;
    /** bare JID -> Map(resource -> {show, status, priority}) */
    this.presence = new Map();
    /** bare JIDs that asked to see our presence */
    this.requests = new Set();
    /** bare JID -> {peer, messages, seen: Set, unread, loaded} */
    this.conversations = new Map();
    /** the conversation on screen, or null */
    this.openPeer = null;
    /** bare JID -> {state, timer} the peer's chat state */
    this.peerStates = new Map();
    /** our own chat state towards the open conversation */
    this.typingState = { peer: null, state: 'active', timer: null };
    this.ownPresence = { show: '', status: '' };

    stream.addEventListener('session', () => this.onSession());
    stream.addEventListener('message', (e) => this.onMessage(e.detail));
    stream.addEventListener('presence', (e) => this.onPresence(e.detail));
    stream.addEventListener('iq', (e) => this.onIq(e.detail));
    stream.addEventListener('acked', (e) => this.onAcked(e.detail.ids));
    stream.addEventListener('servererror', (e) => this.onServerError(e.detail));
  }

  emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  notice(text, level = 'error') {
    this.emit('notice', { text, level });
  }

  name(jid) {
    const item = this.roster.get(jid);
    return (item && item.name) || jid;
  }

  /**
   * Bring back this tab's conversations, and queue again the messages that were still on
   * their way when the page was left (same ids: receivers drop copies they already have).
   */
  async restore() {
    for (const peer of await this.history.peers()) {
      const conversation = await this.conversation(peer);
      for (const message of conversation.messages) {
        if (message.dir === 'out' && message.status === 'sending') {
          this.stream.sendReliable(F.chatMessage(message.to, message.body, message.id));
        }
      }
    }
  }

  // -- the session ---------------------------------------------------------------------

  onSession() {
    // A new session starts from scratch on the server: contacts' presence and pending
    // requests are sent to it again after our first presence, so stale state goes now.
    this.presence.clear();
    this.requests.clear();
    for (const peer of this.peerStates.keys()) this.setPeerState(peer, null);
    this.emit('roster');
    this.loadRoster();
    this.stream.send(F.availability(this.ownPresence.show, this.ownPresence.status));
  }

  async loadRoster() {
    try {
      const result = await this.stream.request(F.rosterGet());
      this.roster.clear();
      for (const item of result.items || []) this.roster.set(item.jid, item);
      this.rosterLoaded = true;
      this.emit('roster');
    } catch (e) {
      if (e.name !== 'NotConnected') this.notice(`Could not load your contacts: ${describe(e)}`);
    }
  }

  /** Own availability: show is "", "chat", "away", "xa" or "dnd". */
  setPresence(show, status) {
    this.ownPresence = { show, status };
    this.emit('ownpresence');
    // Offline, the next session announces it; nothing is lost by not sending now.
    this.stream.send(F.availability(show, status));
  }

  /** Say goodbye to contacts before the socket closes (logout). */
  goOffline() {
    this.stream.send(F.unavailable());
  }

  // -- contacts ------------------------------------------------------------------------

  /** The bare JID for what the user typed: "ewa" means ewa@our-domain. */
  normalizeJid(text) {
    let jid = F.bare(text.trim()).toLowerCase();
    if (jid && !jid.includes('@')) jid = `${jid}@${this.me.split('@')[1]}`;
    return jid;
  }

  /**
   * Add a contact (roster set), let them see our presence in advance (RFC 6121 pre-approval,
   * what "allow this contact to see my status" does in desktop clients, so their request back
   * needs no second click), and ask to see theirs (subscribe).
   */
  async addContact(jid, name) {
    await this.stream.request(F.rosterSet(jid, name));
    const item = this.roster.get(jid);
    if (!item || !['from', 'both'].includes(item.subscription)) {
      this.stream.send(F.subscription(jid, 'subscribed'));
    }
    this.stream.send(F.subscription(jid, 'subscribe'));
    this.requests.delete(jid);
    this.emit('roster');
  }

  async removeContact(jid) {
    await this.stream.request(F.rosterRemove(jid));
  }

  /**
   * Accept a request: let them see our presence, and ask to see theirs unless we already do,
   * which is what a user pressing "accept" means in every XMPP client.
   */
  acceptRequest(jid) {
    if (!this.stream.send(F.subscription(jid, 'subscribed'))) {
      this.notice('Not connected to the server; accept the request again when the connection is back.');
      return;
    }
    const item = this.roster.get(jid);
    if (!item || !(['to', 'both'].includes(item.subscription) || item.ask === 'subscribe')) {
      this.stream.send(F.subscription(jid, 'subscribe'));
    }
    this.requests.delete(jid);
    this.emit('roster');
  }

  declineRequest(jid) {
    if (!this.stream.send(F.subscription(jid, 'unsubscribed'))) {
      this.notice('Not connected to the server; decline the request again when the connection is back.');
      return;
    }
    this.requests.delete(jid);
    this.emit('roster');
  }

  /** The presence to show for a contact: its most reachable resource, or null when offline. */
  presenceOf(jid) {
    const resources = this.presence.get(jid);
    if (!resources || resources.size === 0) return null;
    let best = null;
    for (const info of resources.values()) {
      if (!best || info.priority > best.priority
          || (info.priority === best.priority && SHOW_RANK[info.show] < SHOW_RANK[best.show])) {
        best = info;
      }
    }
    return best;
  }

  /** Everyone to list: roster contacts, and strangers we have a conversation with. */
  people() {
    const jids = new Set(this.roster.keys());
    for (const peer of this.conversations.keys()) if (peer !== this.me) jids.add(peer);
    return [...jids].sort((a, b) => this.name(a).localeCompare(this.name(b)));
  }

  // -- conversations -------------------------------------------------------------------

  async conversation(peer) {
    let conversation = this.conversations.get(peer);
    if (!conversation) {
      conversation = { peer, messages: [], seen: new Set(), unread: 0, loaded: null };
      this.conversations.set(peer, conversation);
    }
    if (!conversation.loaded) {
      conversation.loaded = this.history.load(peer).then((old) => {
        for (const message of old) this.insert(conversation, message);
      }).catch((e) => this.notice(`Could not load the conversation with ${peer}: ${describe(e)}`));
    }
    await conversation.loaded;
    return conversation;
  }

  /** Keys under which a message is known; any one of them seen before makes it a copy. */
  keysOf(message) {
    const keys = [];
    const peer = message.dir === 'in' ? message.from : message.to;
    if (message.id) keys.push(`${message.dir}|${peer}|id:${message.id}`);
    if (message.stanzaId) keys.push(`sid:${message.stanzaId}`);
    return keys;
  }

  /** Add a message in time order unless it is a copy; returns whether it was added. */
  insert(conversation, message) {
    const keys = this.keysOf(message);
    if (keys.some((key) => conversation.seen.has(key))) return false;
    for (const key of keys) conversation.seen.add(key);
    const list = conversation.messages;
    let at = list.length;
    while (at > 0 && list[at - 1].time > message.time) at -= 1;
    list.splice(at, 0, message);
    return true;
  }

  changed(conversation) {
    this.history.save(conversation.peer, conversation.messages);
    this.emit('conversation', { peer: conversation.peer });
  }

  /** Show a conversation: its history is loaded and its unread count cleared. */
  async open(peer) {
    if (this.typingState.peer && this.typingState.peer !== peer) this.stopTyping();
    this.openPeer = peer;
    const conversation = await this.conversation(peer);
    this.markRead();
    this.emit('conversation', { peer });
    return conversation;
  }

  close() {
    this.stopTyping();
    this.openPeer = null;
  }

  /** The open conversation has been seen (opened, or the page became visible again). */
  markRead() {
    const conversation = this.openPeer && this.conversations.get(this.openPeer);
    if (conversation && conversation.unread && this.isVisible()) {
      conversation.unread = 0;
      this.emit('unread');
    }
  }

  unreadTotal() {
    let total = 0;
    for (const conversation of this.conversations.values()) total += conversation.unread;
    return total;
  }

  async sendMessage(peer, body) {
    const frame = F.chatMessage(peer, body);
    const conversation = await this.conversation(peer);
    this.insert(conversation, {
      key: frame.payload.id,
      id: frame.payload.id,
      dir: 'out',
      from: this.me,
      to: peer,
      body,
      time: Date.now(),
      status: 'sending',
    });
    this.typingState.state = 'active'; // the message carries <active/>
    clearTimeout(this.typingState.timer);
    this.stream.sendReliable(frame);
    this.changed(conversation);
  }

  onAcked(ids) {
    const wanted = new Set(ids);
    for (const conversation of this.conversations.values()) {
      let touched = false;
      for (const message of conversation.messages) {
        if (message.dir === 'out' && wanted.has(message.id) && message.status === 'sending') {
          message.status = 'sent';
          touched = true;
        }
      }
      if (touched) this.changed(conversation);
    }
  }

  // -- typing, both ways ---------------------------------------------------------------

  /**
   * Called on every edit of the message box: "composing" once typing starts, "paused" after
   * `typingIdle` ms without a keystroke, "active" when the box is emptied.
   */
  typing(peer, text) {
    const t = this.typingState;
    if (t.peer !== peer) {
      this.stopTyping();
      t.peer = peer;
      t.state = 'active';
    }
    clearTimeout(t.timer);
    if (!text.trim()) {
      if (t.state !== 'active') this.sendState(peer, 'active');
      return;
    }
    if (t.state !== 'composing') this.sendState(peer, 'composing');
    t.timer = setTimeout(() => this.sendState(peer, 'paused'), this.typingIdle);
  }

  /** Leaving a conversation with something typed in it: tell the peer we paused. */
  stopTyping() {
    const t = this.typingState;
    clearTimeout(t.timer);
    if (t.peer && t.state === 'composing') this.sendState(t.peer, 'paused');
    t.peer = null;
    t.state = 'active';
  }

  sendState(peer, state) {
    this.typingState.state = state;
    // Chat states are about now: while offline there is nothing to send them to.
    this.stream.send(F.chatState(peer, state));
  }

  setPeerState(peer, state) {
    const current = this.peerStates.get(peer);
    if (current) clearTimeout(current.timer);
    if (state === 'composing' || state === 'paused') {
      const timer = state === 'composing'
        ? setTimeout(() => this.setPeerState(peer, null), COMPOSING_STALE_MS)
        : null;
      this.peerStates.set(peer, { state, timer });
    } else {
      if (!current) return;
      this.peerStates.delete(peer);
    }
    this.emit('typing', { peer, state });
  }

  peerState(peer) {
    const current = this.peerStates.get(peer);
    return current ? current.state : null;
  }

  // -- incoming ------------------------------------------------------------------------

  async onMessage(payload) {
    const peer = F.bare(payload.from);
    if (payload.type === 'error') {
      await this.onMessageError(peer, payload);
      return;
    }
    const state = F.chatStateOf(payload);
    if (payload.body) {
      this.setPeerState(peer, null);
      const conversation = await this.conversation(peer);
      const message = {
        key: payload.stanza_id || payload.id || F.newId('k'),
        id: payload.id || null,
        stanzaId: payload.stanza_id || null,
        dir: 'in',
        from: peer,
        to: this.me,
        body: payload.body,
        subject: payload.subject || null,
        time: payload.delay ? Date.parse(payload.delay.stamp) || Date.now() : Date.now(),
        delayed: Boolean(payload.delay),
      };
      if (!this.insert(conversation, message)) return; // a copy after a reconnect
      const seen = this.openPeer === peer && this.isVisible();
      if (!seen) {
        conversation.unread += 1;
        this.emit('unread');
      }
      this.changed(conversation);
      this.emit('incoming', { peer, message, seen });
    } else if (state) {
      this.setPeerState(peer, state === 'composing' || state === 'paused' ? state : null);
    }
  }

  async onMessageError(peer, payload) {
    const words = F.describeError(payload.error);
    const conversation = this.conversations.get(peer);
    const sent = conversation && conversation.messages.find((m) => m.dir === 'out' && m.id === payload.id);
    if (sent) {
      sent.status = 'failed';
      sent.error = words;
      this.changed(conversation);
      this.notice(`Your message to ${this.name(peer)} was not delivered: ${words}`);
    } else if (payload.body) {
      this.notice(`A message to ${this.name(peer)} was not delivered: ${words}`);
    } else {
      // A chat state (typing notification) that could not be delivered.
      this.notice(`${this.name(peer)} cannot be reached: ${words}`);
    }
  }

  onPresence(payload) {
    const from = F.bare(payload.from);
    const who = this.name(from);
    switch (payload.type) {
      case undefined:
      case null:
      case '': {
        if (from === this.me) return; // our other devices
        if (!this.presence.has(from)) this.presence.set(from, new Map());
        this.presence.get(from).set(F.resourceOf(payload.from), {
          show: F.SHOW_VALUES.includes(payload.show) ? payload.show : '',
          status: payload.status || '',
          priority: Number(payload.priority) || 0,
        });
        break;
      }
      case 'unavailable': {
        const resources = this.presence.get(from);
        if (resources) resources.delete(F.resourceOf(payload.from));
        if (resources && resources.size === 0) this.presence.delete(from);
        if (!this.presenceOf(from)) this.setPeerState(from, null);
        break;
      }
      case 'subscribe':
        this.requests.add(from);
        break;
      case 'subscribed':
        this.notice(`${who} accepted your contact request.`, 'info');
        break;
      case 'unsubscribed':
        this.presence.delete(from);
        this.notice(`${who} declined your contact request or stopped sharing their presence.`, 'info');
        break;
      case 'unsubscribe':
        this.requests.delete(from);
        break;
      case 'error':
        this.notice(`Presence to ${who} failed: ${F.describeError(payload.error)}`);
        break;
      default:
        return;
    }
    this.emit('roster');
  }

  onIq(payload) {
    if (payload.type === 'set' && F.isRoster(payload)) {
      // A roster push: apply it, and answer it as RFC 6121 asks.
      for (const item of payload.items || []) {
        if (item.subscription === 'remove') {
          this.roster.delete(item.jid);
          this.presence.delete(item.jid);
          this.requests.delete(item.jid);
        } else {
          this.roster.set(item.jid, item);
        }
      }
      this.stream.send(F.iqResult(payload.id));
      this.emit('roster');
    } else if (payload.type === 'get' && payload.ping && payload.id) {
      this.stream.send(F.iqResult(payload.id));
    } else if (payload.type === 'error') {
      this.notice(`The server refused a request: ${F.describeError(payload.error)}`);
    } else if (payload.type === 'get' || payload.type === 'set') {
      // Someone asked this client something it does not do: say so rather than stay silent.
      this.stream.send({
        type: 'iq',
        payload: {
          type: 'error',
          id: payload.id,
          to: payload.from,
          error: { type: 'cancel', condition: 'service-unavailable' },
        },
      });
    }
  }

  onServerError(payload) {
    this.notice(`The server reported an error: ${F.describeError(payload)}`);
  }
}

/** Words for anything thrown by the stream or the API. */
export function describe(error) {
  if (error && error.name === 'StanzaError') return F.describeError(error.error);
  return (error && error.message) || String(error);
}
