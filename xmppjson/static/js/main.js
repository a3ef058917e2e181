// Start-up and the logged-in / logged-out switch.
//
// The token lives in sessionStorage: each tab is its own session (two tabs can be two users),
// a reload keeps you logged in, closing the tab forgets it.

import { Api, ApiError } from './api.js';
import { ChatStream } from './stream.js';
import { Chat } from './chat.js';
import { TabHistory } from './history.js';
import { AuthView, ChatView, ProfileDialog, clearNotices, notify } from './ui.js';

const TOKEN_KEY = 'xmppjson.token';
const JID_KEY = 'xmppjson.jid';
const PRESENCE_KEY = 'xmppjson.presence';

// The server is found relative to this page (a <meta> in index.html), so the client works
// wherever the page is mounted, behind a path prefix included.
const serverBase = new URL(
  document.querySelector('meta[name="xmppjson-server"]')?.content || '/',
  window.location.href,
);
const streamUrl = new URL('stream', serverBase);
streamUrl.protocol = serverBase.protocol === 'https:' ? 'wss:' : 'ws:';

const api = new Api(serverBase);
let session = null; // {stream, chat, view, history} while logged in

const auth = new AuthView({
  async login(jid, password) {
    const { token, jid: bare } = await api.login(jid, password);
    startChat(token, bare);
  },
  async register(jid, password) {
    await api.register(jid, password);
    const { token, jid: bare } = await api.login(jid, password);
    startChat(token, bare);
    notify(`Welcome! Your address is ${bare}.`, 'info');
  },
});
const profile = new ProfileDialog(api);

function startChat(token, jid) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(JID_KEY, jid);
  api.token = token;
  auth.hide();

  const stream = new ChatStream(streamUrl, token, {
    async verifyToken() {
      try {
        await api.me();
        return true;
      } catch (e) {
        return !(e instanceof ApiError && e.status === 401);
      }
    },
  });
  const history = new TabHistory(jid);
  const chat = new Chat(stream, history, {
    me: jid,
    isVisible: () => document.visibilityState === 'visible',
  });
  try {
    Object.assign(chat.ownPresence, JSON.parse(sessionStorage.getItem(PRESENCE_KEY) || '{}'));
  } catch {
    /* keep the default: available */
  }
  // Remember the chosen presence for a reload of this tab.
  chat.addEventListener('ownpresence', () => {
    sessionStorage.setItem(PRESENCE_KEY, JSON.stringify(chat.ownPresence));
  });
  const view = new ChatView(chat, stream, {
    logout,
    profile: () => profile.open(),
    userExists: (localpart) => api.userExists(localpart),
  });
  session = { stream, chat, view, history };

  stream.addEventListener('unauthorized', () => {
    endChat();
    notify('Your session has expired or was ended elsewhere; please log in again.');
  });
  stream.addEventListener('conflict', () => {
    endChat();
    notify('This session was replaced by a newer one; log in again to continue here.');
  });

  view.show();
  chat.restore().catch((e) => notify(`Could not restore your conversations: ${e.message}`));
  stream.start();
}

/** Leave the chat view and forget this tab's login. */
function endChat({ keepHistory = false } = {}) {
  if (session) {
    session.stream.stop();
    session.view.destroy();
    if (!keepHistory) session.history.clear();
    session = null;
  }
  api.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(JID_KEY);
  sessionStorage.removeItem(PRESENCE_KEY);
  auth.show();
}

async function logout() {
  if (!session) return;
  // Contacts see us go at once, not when the server notices the socket closing; and the
  // socket is closed before the token is revoked, so that its end is not taken for an expiry.
  session.chat.goOffline();
  session.stream.stop();
  try {
    await api.logout();
    clearNotices();
  } catch (e) {
    notify(`You are logged out in this tab, but the server could not be told: ${e.message}`);
  }
  endChat();
}

async function boot() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const jid = sessionStorage.getItem(JID_KEY);
  if (!token || !jid) {
    auth.show();
    return;
  }
  api.token = token;
  try {
    await api.me();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      endChat();
      notify('Your session has expired; please log in again.');
      return;
    }
    // The server is unreachable right now: start anyway, the stream keeps retrying.
    notify(e.message);
  }
  startChat(token, jid);
}

boot();
