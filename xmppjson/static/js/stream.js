// The WebSocket half: one ChatStream per logged-in tab.
//
// It keeps a session open for as long as the user is logged in: when the socket drops it
// reconnects by itself with exponential backoff, and messages the user sent are never lost on
// the way.  The dialect has no acknowledgements of its own, so the stream uses one property of
// the server instead: frames on one socket are handled in order, and a ping to one's own
// account is answered at once.  When the result of a ping comes back, every frame sent before
// it has been read by the server.  Until then a message stays in the outbox and is sent again,
// with the same id, on the next socket; receivers drop a second copy by that id.

import { ping, newId } from './frames.js';

/** Close codes the server uses (xmppjson/websocket.py) that mean "do not come back". */
const CLOSE_NOT_AUTHORIZED = 4001;
const CLOSE_CONFLICT = 4009;

/** A stanza error in answer to a request() (an iq of type "error"). */
export class StanzaError extends Error {
  constructor(error, payload) {
    super(error && error.text ? error.text : (error && error.condition) || 'error');
    this.name = 'StanzaError';
    this.error = error || {};
    this.payload = payload;
  }
}

/** The connection went away before an answer came. */
export class NotConnected extends Error {
  constructor(message = 'Not connected to the server; try again when the connection is back.') {
    super(message);
    this.name = 'NotConnected';
  }
}

/**
 * Events (all CustomEvents; the frame or details are in `event.detail`):
 *  - `state`: {state: "connecting" | "online" | "waiting" | "stopped", retryIn (ms, when waiting)}
 *  - `session`: {jid, reconnect} once the server's session frame arrives
 *  - `message`, `presence`, `iq`: the payload of each incoming frame of that type
 *    (iq results and errors that answer request() are not re-emitted)
 *  - `servererror`: the payload of an error frame ({condition, text, id})
 *  - `acked`: {ids} message ids the server is known to have read
 *  - `unauthorized`: the token is no longer valid; the stream has stopped
 *  - `conflict`: the server replaced this session; the stream has stopped
 */
export class ChatStream extends EventTarget {
  /**
   * @param {URL|string} url  ws(s)://host/stream (the token is added as ?token=)
   * @param {string} token  from POST /login
   * @param {object} options
   * @param {() => Promise<boolean>} options.verifyToken  asked after a failed handshake: a
   *   browser WebSocket cannot see the HTTP 401 the server answers to a bad token, so the
   *   stream asks (GET /me) before retrying forever with a token that will never work.
   */
  constructor(url, token, {
    verifyToken = async () => true,
    initialDelay = 500,
    maxDelay = 30000,
    keepaliveInterval = 25000,
    answerTimeout = 10000,
    WebSocketImpl = globalThis.WebSocket,
  } = {}) {
    super();
    this.url = new URL(url);
    this.url.searchParams.set('token', token);
    this.verifyToken = verifyToken;
    this.initialDelay = initialDelay;
    this.maxDelay = maxDelay;
    this.keepaliveInterval = keepaliveInterval;
    this.answerTimeout = answerTimeout;
    this.WebSocketImpl = WebSocketImpl;

    this.state = 'stopped';
    this.jid = null;
    this.ws = null;
    this.failures = 0; // handshakes failed in a row, for the backoff
    this.sessions = 0; // sessions opened so far; > 1 means a reconnect
    this.retryTimer = null;
    this.keepaliveTimer = null;

    /** Messages not yet known to be read by the server: [{id, frame, sentOn}]. */
    this.outbox = [];
    /** ping id -> the outbox entries it acknowledges. */
    this.ackPings = new Map();
    this.ackScheduled = false;
    /** iq id -> {resolve, reject, timer} for request(). */
    this.pending = new Map();

    this.onOnline = () => {
      if (this.state === 'waiting') this.connectNow();
    };
  }

  /** Open the first socket.  Safe to call once; later drops reconnect by themselves. */
  start() {
    if (this.state !== 'stopped') return;
    globalThis.addEventListener?.('online', this.onOnline);
    this.connectNow();
  }

  /** Close for good (logout).  Queued messages that were never read by the server are dropped. */
  stop() {
    this.setState('stopped');
    globalThis.removeEventListener?.('online', this.onOnline);
    clearTimeout(this.retryTimer);
    this.stopKeepalive();
    this.failPending(new NotConnected('Logged out.'));
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState <= 1) ws.close(1000, 'logout');
  }

  get online() {
    return this.state === 'online';
  }

  /**
   * Send a frame now if the session is open.  For what only matters now (chat states,
   * presence, answers): after a reconnect the client re-announces its presence anyway.
   * @returns {boolean} whether it was handed to an open socket
   */
  send(frame) {
    if (!this.online) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /**
   * Send a message that must arrive: it is queued, sent when the session is open, and sent
   * again after a reconnect until the server is known to have read it (`acked` event).
   */
  sendReliable(frame) {
    const id = frame.payload.id;
    this.outbox.push({ id, frame, sentOn: null });
    this.flush();
    return id;
  }

  /**
   * Send an iq get/set and resolve with the result payload; reject with StanzaError on an
   * error answer, NotConnected when offline or when the socket drops before the answer.
   */
  request(frame) {
    if (!this.online) return Promise.reject(new NotConnected());
    const id = frame.payload.id || (frame.payload.id = newId('q'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new NotConnected('The server did not answer in time.'));
      }, this.answerTimeout);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify(frame));
    });
  }

  // -- connection lifecycle -------------------------------------------------------------

  setState(state, extra = {}) {
    this.state = state;
    this.emit('state', { state, ...extra });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  connectNow() {
    clearTimeout(this.retryTimer);
    this.setState('connecting');
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url.href);
    } catch (e) {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let opened = false; // the session frame arrived on this socket
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        this.emit('servererror', { condition: 'bad-request', text: 'the server sent a frame that is not JSON' });
        return;
      }
      if (frame.type === 'session') {
        opened = true;
        this.onSession(frame.payload || {});
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.onSocketClosed(event, opened);
    };
    // onerror carries no detail in browsers; the close event that follows does the work.
    ws.onerror = () => {};
  }

  onSession(payload) {
    this.jid = payload.jid;
    this.failures = 0;
    this.sessions += 1;
    this.setState('online');
    // Listeners re-announce presence and reload the roster before the outbox goes out, so a
    // re-sent message is not the first thing contacts see of a "new" session.
    this.emit('session', { jid: this.jid, reconnect: this.sessions > 1 });
    this.flush();
    this.startKeepalive();
  }

  async onSocketClosed(event, opened) {
    this.stopKeepalive();
    // Nothing sent on the dead socket is known to be read, unless its ping came back.
    for (const entry of this.outbox) entry.sentOn = null;
    this.ackPings.clear();
    this.failPending(new NotConnected('The connection to the server was lost.'));
    if (this.state === 'stopped') return;
    if (event.code === CLOSE_NOT_AUTHORIZED) {
      this.giveUp('unauthorized');
      return;
    }
    if (event.code === CLOSE_CONFLICT) {
      this.giveUp('conflict');
      return;
    }
    if (!opened) {
      this.failures += 1;
      // The handshake failed: a revoked or expired token looks exactly like a network
      // failure from here, so ask the REST side which one it is.
      let valid = true;
      try {
        valid = await this.verifyToken();
      } catch {
        valid = true; // could not tell: keep trying
      }
      if (this.state === 'stopped') return;
      if (!valid) {
        this.giveUp('unauthorized');
        return;
      }
    }
    this.scheduleRetry();
  }

  giveUp(reason) {
    this.stop();
    this.emit(reason, {});
  }

  scheduleRetry() {
    // 0.5 s, 1 s, 2 s, ... up to maxDelay, each shortened by up to half at random so that
    // many tabs dropped by one server restart do not all come back in the same instant.
    const exp = Math.min(this.maxDelay, this.initialDelay * 2 ** Math.min(this.failures, 16));
    const delay = Math.round(exp * (0.5 + Math.random() / 2));
    this.setState('waiting', { retryIn: delay });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (this.state === 'waiting') this.connectNow();
    }, delay);
  }

  /** Drop the current socket as if the network had (used by the keepalive). */
  dropSocket() {
    if (this.ws) this.ws.close(4000, 'no answer');
    // Some browsers wait for the closing handshake before onclose; do not wait for a dead peer.
    const ws = this.ws;
    this.ws = null;
    if (ws && this.state !== 'stopped') this.onSocketClosed({ code: 1006 }, true);
  }

  startKeepalive() {
    this.stopKeepalive();
    this.keepaliveTimer = setInterval(() => {
      if (!this.online) return;
      this.request(ping()).catch(() => {
        // no answer on a socket that looks open: it is dead, start over
        if (this.online) this.dropSocket();
      });
    }, this.keepaliveInterval);
  }

  stopKeepalive() {
    clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
  }

  failPending(error) {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(error);
    }
    this.pending.clear();
  }

  // -- the outbox ----------------------------------------------------------------------

  flush() {
    if (!this.online) return;
    let sent = false;
    for (const entry of this.outbox) {
      if (entry.sentOn === this.ws) continue;
      this.ws.send(JSON.stringify(entry.frame));
      entry.sentOn = this.ws;
      sent = true;
    }
    if (sent && !this.ackScheduled) {
      // One ping for a burst of messages, after the current task has sent them all.
      this.ackScheduled = true;
      queueMicrotask(() => {
        this.ackScheduled = false;
        this.sendAckPing();
      });
    }
  }

  sendAckPing() {
    if (!this.online) return;
    const ws = this.ws;
    const covered = this.outbox.filter((entry) => entry.sentOn === ws);
    if (!covered.length) return;
    const frame = ping();
    this.ackPings.set(frame.payload.id, covered);
    ws.send(JSON.stringify(frame));
  }

  onAck(pingId) {
    const covered = this.ackPings.get(pingId);
    this.ackPings.delete(pingId);
    const done = new Set(covered);
    this.outbox = this.outbox.filter((entry) => !done.has(entry));
    this.emit('acked', { ids: covered.map((entry) => entry.id) });
  }

  // -- incoming frames -----------------------------------------------------------------

  onFrame(frame) {
    const payload = frame.payload || {};
    switch (frame.type) {
      case 'iq':
        if ((payload.type === 'result' || payload.type === 'error') && payload.id) {
          if (this.ackPings.has(payload.id)) {
            if (payload.type === 'result') this.onAck(payload.id);
            else this.ackPings.delete(payload.id); // cannot happen with this server; resend later
            return;
          }
          const waiter = this.pending.get(payload.id);
          if (waiter) {
            this.pending.delete(payload.id);
            clearTimeout(waiter.timer);
            if (payload.type === 'result') waiter.resolve(payload);
            else waiter.reject(new StanzaError(payload.error, payload));
            return;
          }
        }
        this.emit('iq', payload);
        break;
      case 'message':
      case 'presence':
        this.emit(frame.type, payload);
        break;
      case 'error':
        this.emit('servererror', payload);
        break;
      default:
        this.emit('servererror', {
          condition: 'bad-request',
          text: `the server sent a frame of unknown type ${JSON.stringify(frame.type)}`,
        });
    }
  }
}
