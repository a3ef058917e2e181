// Unit tests of the web client's stream and chat model, in node with a fake WebSocket: the
// cases a browser scenario cannot time on purpose (a socket dying between a message and its
// acknowledgement, a copy arriving twice, the backoff schedule, a revoked token).
//
//   node --test tests/browser/

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { ChatStream, NotConnected, StanzaError } from '../../xmppjson/static/js/stream.js';
import { Chat } from '../../xmppjson/static/js/chat.js';
import { TabHistory } from '../../xmppjson/static/js/history.js';
import * as F from '../../xmppjson/static/js/frames.js';

/** Stands in for the browser's WebSocket; the test plays the server. */
class FakeSocket {
  static all = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeSocket.all.push(this);
  }

  static last() {
    return FakeSocket.all.at(-1);
  }

  send(data) {
    assert.equal(this.readyState, 1, 'sent on a socket that is not open');
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose && this.onclose({ code }));
  }

  // -- the server's side --
  accept(jid = 'alice@localhost/web-1') {
    this.readyState = 1;
    this.receive({ type: 'session', payload: { jid, version: 1 } });
  }

  receive(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }

  drop(code = 1006) {
    this.readyState = 3;
    this.onclose({ code });
  }

  /** Answer every ping sent so far (the server reads frames in order). */
  answerPings() {
    for (const frame of this.sent) {
      if (frame.type === 'iq' && frame.payload.ping && !frame.answered) {
        frame.answered = true;
        this.receive({ type: 'iq', payload: { type: 'result', id: frame.payload.id, from: 'localhost' } });
      }
    }
  }

  messages() {
    return this.sent.filter((f) => f.type === 'message');
  }
}

class MemoryStorage {
  constructor() {
    this.data = new Map();
  }

  getItem(key) {
    return this.data.has(key) ? this.data.get(key) : null;
  }

  setItem(key, value) {
    this.data.set(key, String(value));
  }

  removeItem(key) {
    this.data.delete(key);
  }
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

function makeStream(options = {}) {
  FakeSocket.all = [];
  const stream = new ChatStream('ws://server.test/stream', 'TOKEN', {
    WebSocketImpl: FakeSocket,
    initialDelay: 1,
    maxDelay: 8,
    keepaliveInterval: 60000,
    ...options,
  });
  const events = [];
  for (const type of ['state', 'session', 'acked', 'unauthorized', 'conflict', 'servererror', 'message']) {
    stream.addEventListener(type, (e) => events.push({ type, ...e.detail }));
  }
  return { stream, events };
}

async function until(what, probe, timeout = 2000) {
  const deadline = Date.now() + timeout;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(1);
  }
}

test('the token goes in the URL and the session frame makes the stream online', () => {
  const { stream, events } = makeStream();
  stream.start();
  assert.equal(new URL(FakeSocket.last().url).searchParams.get('token'), 'TOKEN');
  assert.equal(stream.state, 'connecting');
  FakeSocket.last().accept();
  assert.equal(stream.state, 'online');
  assert.equal(stream.jid, 'alice@localhost/web-1');
  assert.deepEqual(events.find((e) => e.type === 'session'), { type: 'session', jid: 'alice@localhost/web-1', reconnect: false });
  stream.stop();
});

test('a message is acknowledged by the ping that follows it', async () => {
  const { stream, events } = makeStream();
  stream.start();
  const socket = FakeSocket.last();
  socket.accept();
  stream.sendReliable(F.chatMessage('bob@localhost', 'one', 'm1'));
  stream.sendReliable(F.chatMessage('bob@localhost', 'two', 'm2'));
  await tick();
  // Both messages, then one ping for the burst.
  assert.deepEqual(socket.sent.map((f) => f.payload.id ?? null).slice(0, 2), ['m1', 'm2']);
  assert.equal(socket.sent.filter((f) => f.payload.ping).length, 1);
  assert.equal(stream.outbox.length, 2);
  socket.answerPings();
  assert.equal(stream.outbox.length, 0);
  assert.deepEqual(events.filter((e) => e.type === 'acked').map((e) => e.ids), [['m1', 'm2']]);
  stream.stop();
});

test('a message written while offline waits for the session', async () => {
  const { stream } = makeStream();
  stream.start();
  stream.sendReliable(F.chatMessage('bob@localhost', 'early', 'm1'));
  const socket = FakeSocket.last();
  assert.deepEqual(socket.sent, []);
  socket.accept();
  await tick();
  assert.deepEqual(socket.messages().map((f) => f.payload.body), ['early']);
  stream.stop();
});

test('a message whose acknowledgement was lost is sent again, with the same id, after a reconnect', async () => {
  const { stream, events } = makeStream();
  stream.start();
  const first = FakeSocket.last();
  first.accept();
  stream.sendReliable(F.chatMessage('bob@localhost', 'maybe lost', 'm1'));
  await tick();
  assert.equal(first.messages().length, 1);
  first.drop(); // before the ping came back
  assert.equal(stream.state, 'waiting');
  await until('a new socket', () => FakeSocket.all.length === 2);
  const second = FakeSocket.last();
  second.accept();
  await tick();
  assert.deepEqual(second.messages().map((f) => [f.payload.id, f.payload.body]), [['m1', 'maybe lost']]);
  assert.ok(events.find((e) => e.type === 'session' && e.reconnect));
  second.answerPings();
  assert.equal(stream.outbox.length, 0);
  stream.stop();
});

test('an acknowledged message is not sent again after a reconnect', async () => {
  const { stream } = makeStream();
  stream.start();
  const first = FakeSocket.last();
  first.accept();
  stream.sendReliable(F.chatMessage('bob@localhost', 'arrived', 'm1'));
  await tick();
  first.answerPings();
  first.drop();
  await until('a new socket', () => FakeSocket.all.length === 2);
  FakeSocket.last().accept();
  await tick();
  assert.deepEqual(FakeSocket.last().messages(), []);
  stream.stop();
});

test('failed handshakes back off exponentially up to the maximum, with jitter', async () => {
  const { stream, events } = makeStream({ initialDelay: 2, maxDelay: 16 });
  stream.start();
  for (let i = 0; i < 6; i += 1) {
    await until(`attempt ${i + 1}`, () => FakeSocket.all.length === i + 1);
    FakeSocket.all[i].drop(); // refused before any session frame
  }
  await until('attempt 7', () => FakeSocket.all.length === 7);
  const delays = events.filter((e) => e.type === 'state' && e.state === 'waiting').map((e) => e.retryIn);
  stream.stop();
  // after 1, 2, 3, ... failures: at most 4, 8, 16, 16 ... ms, and at least half of that
  const ceilings = [4, 8, 16, 16, 16, 16];
  assert.equal(delays.length, ceilings.length);
  for (const [i, ceiling] of ceilings.entries()) {
    assert.ok(delays[i] <= ceiling && delays[i] >= ceiling / 2, `delay ${i} is ${delays[i]} (${delays})`);
  }
});

test('a handshake refused for a revoked token stops the stream instead of retrying forever', async () => {
  let asked = 0;
  const { stream, events } = makeStream({
    verifyToken: async () => {
      asked += 1;
      return false;
    },
  });
  stream.start();
  FakeSocket.last().drop(); // a 401 at the handshake looks like this from a browser
  await until('the stream to give up', () => stream.state === 'stopped');
  assert.equal(asked, 1);
  assert.ok(events.find((e) => e.type === 'unauthorized'));
  await tick(20);
  assert.equal(FakeSocket.all.length, 1);
});

test('the server closing with not-authorized or conflict stops the stream', async () => {
  for (const [code, event] of [[4001, 'unauthorized'], [4009, 'conflict']]) {
    const { stream, events } = makeStream();
    stream.start();
    FakeSocket.last().accept();
    FakeSocket.last().drop(code);
    assert.equal(stream.state, 'stopped');
    assert.ok(events.find((e) => e.type === event), event);
    await tick(10);
    assert.equal(FakeSocket.all.length, 1);
  }
});

test('request() resolves with the result, rejects with the stanza error, and fails on a drop', async () => {
  const { stream } = makeStream();
  await assert.rejects(stream.request(F.rosterGet('r0')), NotConnected);
  stream.start();
  const socket = FakeSocket.last();
  socket.accept();

  const ok = stream.request(F.rosterGet('r1'));
  socket.receive({ type: 'iq', payload: { type: 'result', id: 'r1', query: 'jabber:iq:roster', items: [] } });
  assert.deepEqual((await ok).items, []);

  const refused = stream.request(F.rosterRemove('nobody@localhost', 'r2'));
  socket.receive({ type: 'iq', payload: { type: 'error', id: 'r2', error: { type: 'cancel', condition: 'item-not-found' } } });
  await assert.rejects(refused, (e) => e instanceof StanzaError && e.error.condition === 'item-not-found');

  const lost = stream.request(F.rosterGet('r3'));
  socket.drop();
  await assert.rejects(lost, NotConnected);
  stream.stop();
});

test('error frames and unreadable frames reach the page as servererror events', () => {
  const { stream, events } = makeStream();
  stream.start();
  const socket = FakeSocket.last();
  socket.accept();
  socket.receive({ type: 'error', payload: { condition: 'bad-request', text: 'payload.to: not a valid JID', id: 'x' } });
  socket.onmessage({ data: 'not json' });
  const errors = events.filter((e) => e.type === 'servererror');
  assert.equal(errors.length, 2);
  assert.equal(errors[0].text, 'payload.to: not a valid JID');
  stream.stop();
});

// -- the chat model ------------------------------------------------------------------------

function makeChat(options = {}) {
  const { stream } = makeStream();
  const storage = options.storage || new MemoryStorage();
  const history = new TabHistory('alice@localhost', storage);
  const chat = new Chat(stream, history, { me: 'alice@localhost', typingIdle: 20, ...options });
  const notices = [];
  chat.addEventListener('notice', (e) => notices.push(e.detail));
  stream.start();
  FakeSocket.last().accept();
  return { stream, chat, socket: FakeSocket.last(), notices, storage };
}

function incoming(body, { id, stanzaId, from = 'bob@localhost/desk', delay } = {}) {
  const payload = { from, to: 'alice@localhost', type: 'chat', body, id };
  if (stanzaId) payload.stanza_id = stanzaId;
  if (delay) payload.delay = { stamp: delay, from: 'localhost' };
  return { type: 'message', payload };
}

test('on a session the chat asks for the roster and announces its presence', () => {
  const { chat, socket, stream } = makeChat();
  const kinds = socket.sent.map((f) => (f.type === 'iq' ? `iq:${f.payload.query}` : f.type));
  assert.deepEqual(kinds, ['iq:jabber:iq:roster', 'presence']);
  assert.deepEqual(socket.sent[1].payload, {});
  chat.setPresence('away', 'lunch');
  assert.deepEqual(socket.sent.at(-1), { type: 'presence', payload: { show: 'away', status: 'lunch' } });
  stream.stop();
});

test('a message that arrives twice is shown once (same id, or same stanza-id)', async () => {
  const { chat, socket, stream } = makeChat();
  socket.receive(incoming('hi', { id: 'b1', stanzaId: 'S1' }));
  // Re-sent after the sender reconnected: same id, new stanza-id from the server.
  socket.receive(incoming('hi', { id: 'b1', stanzaId: 'S2' }));
  // Re-delivered by the server: same stanza-id.
  socket.receive(incoming('hi', { id: 'other', stanzaId: 'S1' }));
  await tick();
  const conversation = chat.conversations.get('bob@localhost');
  assert.deepEqual(conversation.messages.map((m) => m.body), ['hi']);
  assert.equal(conversation.unread, 1);
  socket.receive(incoming('hi', { id: 'b2', stanzaId: 'S3' }));
  await tick();
  assert.equal(conversation.messages.length, 2);
  assert.equal(conversation.unread, 2);
  stream.stop();
});

test('unread counts only what is not on screen', async () => {
  let visible = true;
  const { chat, socket, stream } = makeChat({ isVisible: () => visible });
  await chat.open('bob@localhost');
  socket.receive(incoming('seen', { id: '1' }));
  await tick();
  assert.equal(chat.unreadTotal(), 0);
  visible = false;
  socket.receive(incoming('unseen', { id: '2' }));
  socket.receive(incoming('other', { id: '3', from: 'carol@localhost/x' }));
  await tick();
  assert.equal(chat.unreadTotal(), 2);
  visible = true;
  chat.markRead();
  assert.equal(chat.unreadTotal(), 1);
  stream.stop();
});

test('offline messages are placed by their delay stamp', async () => {
  const { chat, socket, stream } = makeChat();
  socket.receive(incoming('now', { id: '2' }));
  socket.receive(incoming('earlier', { id: '1', delay: '2020-01-01T10:00:00.000000Z' }));
  await tick();
  const messages = chat.conversations.get('bob@localhost').messages;
  assert.deepEqual(messages.map((m) => [m.body, m.delayed]), [['earlier', true], ['now', false]]);
  stream.stop();
});

test('typing: composing once, paused after the idle time, active when emptied or sent', async () => {
  const { chat, socket, stream } = makeChat();
  const states = () => socket.messages().map((f) => F.chatStateOf(f.payload) + (f.payload.body ? `:${f.payload.body}` : ''));
  chat.typing('bob@localhost', 'h');
  chat.typing('bob@localhost', 'he');
  assert.deepEqual(states(), ['composing']);
  await tick(40);
  assert.deepEqual(states(), ['composing', 'paused']);
  chat.typing('bob@localhost', 'hey');
  chat.typing('bob@localhost', '');
  assert.deepEqual(states(), ['composing', 'paused', 'composing', 'active']);
  chat.typing('bob@localhost', 'x');
  await chat.sendMessage('bob@localhost', 'x');
  await tick(40); // no "paused" after a sent message
  assert.deepEqual(states(), ['composing', 'paused', 'composing', 'active', 'composing', 'active:x']);
  stream.stop();
});

test("the peer's chat states are shown and cleared by their message", async () => {
  const { chat, socket, stream } = makeChat();
  const seen = [];
  chat.addEventListener('typing', (e) => seen.push(e.detail.state));
  socket.receive({ type: 'message', payload: { from: 'bob@localhost/d', type: 'chat', body: '', composing: { ID: '' } } });
  assert.equal(chat.peerState('bob@localhost'), 'composing');
  socket.receive({ type: 'message', payload: { from: 'bob@localhost/d', type: 'chat', body: '', paused: {} } });
  assert.equal(chat.peerState('bob@localhost'), 'paused');
  socket.receive(incoming('done', { id: 'x', from: 'bob@localhost/d' }));
  assert.equal(chat.peerState('bob@localhost'), null);
  assert.deepEqual(seen, ['composing', 'paused', null]);
  stream.stop();
});

test('a bounced message is marked failed and the user is told why', async () => {
  const { chat, socket, stream, notices } = makeChat();
  await chat.sendMessage('ghost@localhost', 'anyone?');
  const id = socket.messages()[0].payload.id;
  socket.receive({
    type: 'message',
    payload: {
      from: 'ghost@localhost', id, type: 'error', body: 'anyone?',
      error: { type: 'cancel', condition: 'service-unavailable' },
    },
  });
  await tick();
  const [message] = chat.conversations.get('ghost@localhost').messages;
  assert.equal(message.status, 'failed');
  assert.match(notices[0].text, /not delivered: There is no such user/);
  stream.stop();
});

test('roster pushes are applied and answered; presence is tracked per resource', () => {
  const { chat, socket, stream } = makeChat();
  socket.receive({ type: 'iq', payload: { type: 'set', id: 'push1', query: 'jabber:iq:roster', items: [{ jid: 'bob@localhost', name: 'Bob', subscription: 'both', ask: null, groups: [] }] } });
  assert.equal(chat.roster.get('bob@localhost').name, 'Bob');
  assert.deepEqual(socket.sent.at(-1), { type: 'iq', payload: { type: 'result', id: 'push1' } });

  socket.receive({ type: 'presence', payload: { from: 'bob@localhost/phone', show: 'away' } });
  socket.receive({ type: 'presence', payload: { from: 'bob@localhost/desk', status: 'working' } });
  assert.deepEqual(chat.presenceOf('bob@localhost'), { show: '', status: 'working', priority: 0 });
  socket.receive({ type: 'presence', payload: { from: 'bob@localhost/desk', type: 'unavailable' } });
  assert.equal(chat.presenceOf('bob@localhost').show, 'away');
  socket.receive({ type: 'presence', payload: { from: 'bob@localhost/phone', type: 'unavailable' } });
  assert.equal(chat.presenceOf('bob@localhost'), null);

  socket.receive({ type: 'presence', payload: { from: 'carol@localhost', type: 'subscribe' } });
  assert.ok(chat.requests.has('carol@localhost'));
  chat.acceptRequest('carol@localhost');
  assert.deepEqual(socket.sent.slice(-2).map((f) => f.payload), [
    { to: 'carol@localhost', type: 'subscribed' },
    { to: 'carol@localhost', type: 'subscribe' },
  ]);
  assert.ok(!chat.requests.has('carol@localhost'));

  socket.receive({ type: 'iq', payload: { type: 'set', id: 'push2', query: 'jabber:iq:roster', items: [{ jid: 'bob@localhost', subscription: 'remove' }] } });
  assert.ok(!chat.roster.has('bob@localhost'));
  stream.stop();
});

test('a reload brings the conversation back and sends again what was still on its way', async () => {
  const storage = new MemoryStorage();
  const first = makeChat({ storage });
  await first.chat.sendMessage('bob@localhost', 'in flight');
  const id = first.socket.messages()[0].payload.id;
  first.stream.stop(); // the tab is reloaded before the acknowledgement

  const second = makeChat({ storage });
  await second.chat.restore();
  await tick();
  const conversation = second.chat.conversations.get('bob@localhost');
  assert.deepEqual(conversation.messages.map((m) => [m.body, m.status]), [['in flight', 'sending']]);
  assert.deepEqual(second.socket.messages().map((f) => [f.payload.id, f.payload.body]), [[id, 'in flight']]);
  second.socket.answerPings();
  assert.equal(conversation.messages[0].status, 'sent');
  second.stream.stop();
});

test('stanza errors are described in words', () => {
  assert.equal(
    F.describeError({ type: 'cancel', condition: 'item-not-found', text: 'no such contact' }),
    'No such user or item (no such contact).',
  );
  assert.equal(F.describeError({ condition: 'made-up' }), 'Made-up.');
});
