// The JSON WebSocket dialect (docs/json-dialect.md), as small pure functions.
//
// This module is the place to read if you are writing your own client: every frame this web
// client sends is built here, and every frame it receives is classified here.  Nothing in it
// touches the network or the page.
//
// A frame is always {"type": T, "payload": P} in one text frame.

/** Chat states (XEP-0085) as keys of a message payload. */
export const CHAT_STATES = ['active', 'composing', 'paused', 'inactive', 'gone'];

/** Presence `show` values; absent (or "av" from old clients) means plainly available. */
export const SHOW_VALUES = ['chat', 'away', 'xa', 'dnd'];

let counter = 0;

/**
 * A fresh stanza id.  Ids matter: a message that may be sent twice (after a reconnect) keeps
 * its id, and receivers drop the second copy by it.
 */
export function newId(prefix = 'w') {
  counter += 1;
  const random = (globalThis.crypto && crypto.randomUUID)
    ? crypto.randomUUID().slice(0, 8)
    : Math.random().toString(16).slice(2, 10);
  return `${prefix}${random}${counter.toString(36)}`;
}

// -- frames the client sends -------------------------------------------------------------

/**
 * A chat message.  A message with a body also carries the `active` chat state: XEP-0085 says
 * sending a message means the user is active in the conversation, and it clears the peer's
 * "is typing" display.
 */
export function chatMessage(to, body, id = newId('m')) {
  return { type: 'message', payload: { to, id, type: 'chat', body, active: {} } };
}

/** A chat state alone (no body): "composing", "paused", "active", "inactive" or "gone". */
export function chatState(to, state) {
  if (!CHAT_STATES.includes(state)) throw new Error(`unknown chat state ${state}`);
  return { type: 'message', payload: { to, id: newId('s'), type: 'chat', [state]: {} } };
}

/** Own availability, broadcast to contacts; `show` "" means available. */
export function availability(show = '', status = '') {
  const payload = {};
  if (show) payload.show = show;
  if (status) payload.status = status;
  return { type: 'presence', payload };
}

/** Going offline on purpose (sent before logging out, so contacts see it at once). */
export function unavailable() {
  return { type: 'presence', payload: { type: 'unavailable' } };
}

/**
 * A subscription handshake presence to a contact's bare JID: "subscribe" (ask to see their
 * presence), "subscribed" (accept their request), "unsubscribe", "unsubscribed" (decline or
 * revoke).
 */
export function subscription(to, type) {
  return { type: 'presence', payload: { to, type } };
}

export function rosterGet(id = newId('r')) {
  return { type: 'iq', payload: { type: 'get', id, query: 'jabber:iq:roster' } };
}

/** Add a contact or rename it. */
export function rosterSet(jid, name, id = newId('r')) {
  const item = { jid };
  if (name) item.name = name;
  return { type: 'iq', payload: { type: 'set', id, query: 'jabber:iq:roster', item } };
}

/** Remove a contact (the server also cancels the subscriptions both ways). */
export function rosterRemove(jid, id = newId('r')) {
  return {
    type: 'iq',
    payload: { type: 'set', id, query: 'jabber:iq:roster', item: { jid, subscription: 'remove' } },
  };
}

/** The answer RFC 6121 asks for when the server pushes a roster change. */
export function iqResult(id) {
  return { type: 'iq', payload: { type: 'result', id } };
}

/**
 * A ping to one's own account: the server answers it at once and in order, so its result
 * also proves that every frame sent before it was read by the server.
 */
export function ping(id = newId('p')) {
  return { type: 'iq', payload: { type: 'get', id, ping: {} } };
}

// -- frames the client receives ---------------------------------------------------------

/** The chat state carried by a message payload, or null. */
export function chatStateOf(payload) {
  return CHAT_STATES.find((state) => payload && Object.hasOwn(payload, state)) || null;
}

/** Whether an iq payload is about the roster (a result to a get, or a push). */
export function isRoster(payload) {
  return payload.query === 'jabber:iq:roster' || Array.isArray(payload.items);
}

/** "a@b/c" -> "a@b". */
export function bare(jid) {
  return String(jid || '').split('/')[0];
}

/** "a@b/c" -> "c" ("" for a bare JID). */
export function resourceOf(jid) {
  const s = String(jid || '');
  const slash = s.indexOf('/');
  return slash < 0 ? '' : s.slice(slash + 1);
}

// -- stanza errors, in words ------------------------------------------------------------

const CONDITION_WORDS = {
  'bad-request': 'the server could not understand the request',
  conflict: 'it conflicts with something that already exists',
  'feature-not-implemented': 'the server does not support this',
  forbidden: 'you are not allowed to do this',
  gone: 'the recipient is gone',
  'internal-server-error': 'the server had an internal error',
  'item-not-found': 'no such user or item',
  'jid-malformed': 'that is not a valid address',
  'not-acceptable': 'the server did not accept it',
  'not-allowed': 'this is not allowed',
  'not-authorized': 'you are not authorised to do this',
  'policy-violation': 'it breaks a rule of this server',
  'recipient-unavailable': 'the recipient is not available',
  'remote-server-not-found': 'that server cannot be reached (this server only talks to its own users)',
  'remote-server-timeout': 'that server did not answer in time',
  'resource-constraint': 'the server is busy; try again later',
  'service-unavailable': 'there is no such user, or they cannot receive this',
  'subscription-required': 'you need to be subscribed first',
  'undefined-condition': 'an unspecified error occurred',
  'unexpected-request': 'the server did not expect this now',
  'upgrade-required': 'the server requires a newer connection',
  'system-shutdown': 'the server is shutting down',
};

/**
 * A readable sentence for an `error` object ({type, condition, text}) of a stanza of type
 * "error", or for the payload of an error frame ({condition, text}).
 */
export function describeError(error) {
  if (!error) return 'An unknown error occurred.';
  const words = CONDITION_WORDS[error.condition] || error.condition || 'an unknown error occurred';
  const text = error.text && error.text !== error.condition ? ` (${error.text})` : '';
  const retry = error.type === 'wait' && error.condition !== 'resource-constraint' ? '; try again later' : '';
  return `${words.charAt(0).toUpperCase()}${words.slice(1)}${retry}${text}.`;
}
