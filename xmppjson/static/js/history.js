// Where conversations are kept between page loads.
//
// The server has no history API yet, so the client keeps what this tab has seen in
// sessionStorage (per tab, like the token): a reload does not empty the conversations, closing
// the tab does.  The Chat model only talks to the small interface below, so a history backed
// by the server (MAM over the dialect, or a REST call) can replace TabHistory without touching
// the rest of the client:
//
//   peers()                       -> Promise<string[]>   bare JIDs with a conversation
//   load(peer, {before, limit})   -> Promise<Message[]>  oldest first; `before` (a time in ms)
//                                                        asks for an older page
//   save(peer, messages)          -> void                the conversation as it is now
//
// A Message is a plain object: {key, id, stanzaId, dir: "in"|"out", from, to, body, time,
// delayed, status, error}.  The Chat model de-duplicates by `id` and `stanzaId`, so a server
// history may return messages the tab already has.

/** The conversations one account has seen in this tab. */
export class TabHistory {
  /**
   * @param {string} account  the user's bare JID: two accounts used one after the other in
   *   the same tab do not see each other's conversations
   * @param {Storage} storage  sessionStorage in the page
   * @param {number} keep  messages kept per conversation (sessionStorage holds ~5 MB)
   */
  constructor(account, storage = globalThis.sessionStorage, keep = 500) {
    this.key = `xmppjson.history.${account}`;
    this.storage = storage;
    this.keep = keep;
  }

  readAll() {
    try {
      const data = JSON.parse(this.storage.getItem(this.key) || '{}');
      return data && typeof data === 'object' ? data : {};
    } catch {
      return {}; // a corrupt entry must not stop the client from starting
    }
  }

  async peers() {
    return Object.keys(this.readAll());
  }

  async load(peer, { before = Infinity, limit = this.keep } = {}) {
    const messages = (this.readAll()[peer] || []).filter((m) => m.time < before);
    return messages.slice(-limit);
  }

  save(peer, messages) {
    const all = this.readAll();
    all[peer] = messages.slice(-this.keep);
    try {
      this.storage.setItem(this.key, JSON.stringify(all));
    } catch {
      // Storage full: keep only the newest half of every conversation and try once more.
      for (const name of Object.keys(all)) all[name] = all[name].slice(-Math.ceil(this.keep / 4));
      try {
        this.storage.setItem(this.key, JSON.stringify(all));
      } catch {
        /* the conversation still lives in memory for this page */
      }
    }
  }

  /** Forget everything (logout). */
  clear() {
    this.storage.removeItem(this.key);
  }
}
