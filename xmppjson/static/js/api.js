// The REST half of xmppjson (docs/rest.md): register, log in, profile, log out.
//
// Every call either resolves with the parsed JSON body (or null for 204) or rejects with an
// ApiError whose `message` is a sentence a person can read.  The UI shows that sentence as is,
// so nothing here may swallow a failure or turn it into a bare status code.

/** A failed REST call: the HTTP status (0 when the server was not reached) and the server's words. */
export class ApiError extends Error {
  constructor(message, { status = 0, condition = null, fieldErrors = [] } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.condition = condition;
    /** [{field, message}] from a 422 answer, so forms can point at the field. */
    this.fieldErrors = fieldErrors;
  }
}

// What to say when the server gave no description of its own (it always should, but a proxy
// in front of it might answer with an HTML page).
const STATUS_WORDS = {
  400: 'The server could not read the request.',
  401: 'You are not logged in, or your session has expired.',
  403: 'That is not allowed.',
  404: 'Not found.',
  409: 'That already exists.',
  413: 'That is too large for the server.',
  422: 'Some fields are not valid.',
  429: 'Too many requests; wait a moment and try again.',
  500: 'The server had an internal error.',
  502: 'The server is not reachable right now.',
  503: 'The server is temporarily unavailable; try again in a few seconds.',
};

export class Api {
  /**
   * @param {URL|string} base  where the REST API lives; every path is resolved against it,
   *   so the client also works when the server sits behind a path prefix.
   */
  constructor(base) {
    this.base = new URL(base);
    this.token = null;
  }

  url(path) {
    return new URL(path.replace(/^\//, ''), this.base);
  }

  async call(method, path, { body, auth = false } = {}) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth) {
      if (!this.token) throw new ApiError('You are not logged in.', { status: 401 });
      headers.Authorization = `Bearer ${this.token}`;
    }
    let response;
    try {
      response = await fetch(this.url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(`Cannot reach the server (${e.message}).`);
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (response.ok) return data;
    throw errorFrom(response.status, data);
  }

  /** POST /users: register `localpart` (201 {jid}). */
  register(localpart, password) {
    return this.call('POST', '/users', { body: { jid: localpart, password } });
  }

  /** GET /users/{localpart}: whether the user exists (200) or not (404). */
  async userExists(localpart) {
    try {
      await this.call('GET', `/users/${encodeURIComponent(localpart)}`);
      return true;
    } catch (e) {
      if (e.status === 404) return false;
      throw e;
    }
  }

  /**
   * POST /login.  Keeps the token for later calls and returns {token, jid, profile}, with the
   * original API's trailing slash taken off the JID ("szymon@localhost/" -> "szymon@localhost").
   */
  async login(localpart, password) {
    const data = await this.call('POST', '/login', { body: { jid: localpart, password } });
    this.token = data.token;
    const { token, ...profile } = data;
    return { token, jid: bareJid(data.jid), profile };
  }

  /** GET /me: the own profile; also how a stored token is checked on page load. */
  me() {
    return this.call('GET', '/me', { auth: true });
  }

  /** PATCH /me with only the changed fields (null clears one). */
  updateProfile(fields) {
    return this.call('PATCH', '/me', { body: fields, auth: true });
  }

  /** POST /logout: revoke this tab's token. */
  async logout() {
    try {
      await this.call('POST', '/logout', { auth: true });
    } finally {
      this.token = null;
    }
  }
}

/** The ApiError for a non-2xx answer, worded from the server's JSON error body. */
export function errorFrom(status, data) {
  const condition = data && typeof data.error === 'string' ? data.error : null;
  const fieldErrors = data && Array.isArray(data.errors) ? data.errors : [];
  const message = data && typeof data.description === 'string' && data.description
    ? sentence(data.description)
    : STATUS_WORDS[status] || `The server answered with HTTP ${status}.`;
  return new ApiError(message, { status, condition, fieldErrors });
}

function sentence(text) {
  const s = text.trim();
  const capital = s.charAt(0).toUpperCase() + s.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/** "a@b/res" -> "a@b" (and "a@b/" -> "a@b"). */
export function bareJid(jid) {
  return String(jid || '').split('/')[0];
}
