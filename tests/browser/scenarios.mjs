#!/usr/bin/env node
// Browser scenarios for the web client, run by tests/test_webclient.py against a live server.
//
//   node scenarios.mjs --scenario NAME --base http://127.0.0.1:PORT/ --shots DIR
//                      [--c2s-port N --python PATH] [--chromium /usr/bin/chromium]
//
// Scenarios: two-browsers, xmpp-peer, offline-message (see the functions of the same name).
//
// Talks to the test on stdout, one JSON object per line:
//   {"step": "..."}                          progress, for the test log
//   {"control": "drop", "user": "alice"}     asks the test to cut that user's WebSockets on the
//                                            server side; the test answers on stdin with
//                                            {"control": "dropped", "count": N}
//   {"ok": true} / {"ok": false, "error": "...", "step": "..."}   the outcome, last line
// The exit status is 0 only when the scenario passed.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string' },
    base: { type: 'string' },
    shots: { type: 'string' },
    'c2s-port': { type: 'string' },
    python: { type: 'string', default: 'python3' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});

const BASE = new URL(args.base);
const TIMEOUT = 8000; // for any one thing to appear on a page

let currentStep = 'start';
const started = Date.now();
function step(name) {
  currentStep = name;
  say({ step: name, ms: Date.now() - started });
}
function say(object) {
  process.stdout.write(`${JSON.stringify(object)}\n`);
}

// -- control channel to the test -----------------------------------------------------

const controlReplies = [];
const controlWaiters = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  let message;
  try {
    message = JSON.parse(line);
  } catch {
    return;
  }
  const waiter = controlWaiters.shift();
  if (waiter) waiter(message);
  else controlReplies.push(message);
});

/** Ask the test to do something to the server and wait for its answer. */
function control(request) {
  say({ control: request.control, ...request });
  if (controlReplies.length) return Promise.resolve(controlReplies.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to control ${request.control}`)), TIMEOUT);
    controlWaiters.push((message) => {
      clearTimeout(timer);
      resolve(message);
    });
  });
}

// -- helpers -------------------------------------------------------------------------

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Poll `probe` until it returns a truthy value; fail with `what` (and the last value) if not. */
async function waitUntil(what, probe, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(args.shots, `${name}.png`), fullPage: false });
}

const contactSel = (jid) => `#contact-list li[data-jid="${jid}"]`;

/** A browser user: one isolated context (its own sessionStorage), one tab. */
class User {
  constructor(browser, name, { viewport = { width: 1100, height: 720 } } = {}) {
    this.browser = browser;
    this.name = name;
    this.jid = `${name}@localhost`;
    this.password = `${name}-secret`;
    this.viewport = viewport;
    this.pageErrors = [];
  }

  async open() {
    this.context = await this.browser.newContext({ viewport: this.viewport });
    this.page = await this.context.newPage();
    // A script error is a failed test, whatever the page shows afterwards.
    this.page.on('pageerror', (error) => this.pageErrors.push(error.message));
    await this.page.goto(BASE.href);
    await this.page.waitForSelector('#auth-view:not([hidden])');
    return this;
  }

  async close() {
    this.checkNoScriptErrors();
    await this.context.close();
  }

  checkNoScriptErrors() {
    check(this.pageErrors.length === 0, `${this.name}: script errors: ${this.pageErrors.join('; ')}`);
  }

  async register() {
    const p = this.page;
    await p.fill('#register-jid', this.name);
    await p.fill('#register-password', this.password);
    await p.click('#register-form button[type=submit]');
    await this.online();
  }

  async login(password = this.password) {
    const p = this.page;
    await p.fill('#login-jid', this.name);
    await p.fill('#login-password', password);
    await p.click('#login-form button[type=submit]');
  }

  async online() {
    await this.page.waitForSelector('#connection[data-state="online"]', { timeout: TIMEOUT });
    check((await this.page.textContent('#me-jid')) === this.jid, `${this.name}: wrong JID shown`);
  }

  async addContact(jid) {
    await this.page.fill('#add-jid', jid);
    await this.page.click('#add-contact-form button[type=submit]');
  }

  /** The contact's presence as the list shows it: {show, text, unread}. */
  async contact(jid) {
    return this.page.$eval(contactSel(jid), (li) => ({
      show: li.dataset.show,
      text: li.querySelector('.contact-presence').textContent,
      unread: li.querySelector('.badge') ? Number(li.querySelector('.badge').dataset.unread) : 0,
    }));
  }

  async waitContact(jid, what, test) {
    let seen = null;
    try {
      return await waitUntil(`${this.name} to see ${jid} ${what}`, async () => {
        seen = await this.contact(jid);
        return test(seen) && seen;
      });
    } catch (e) {
      throw new Error(`${e.message}; the list shows ${JSON.stringify(seen)}`);
    }
  }

  async openConversation(jid) {
    await this.page.click(`${contactSel(jid)} .contact-open`);
    await this.page.waitForSelector('#conversation-pane:not([hidden])');
    check((await this.page.getAttribute(`${contactSel(jid)} .contact-open`, 'aria-current')) === 'true',
      `${this.name}: the open contact is not marked current`);
  }

  /** Type like a person (each key fires input events) without sending. */
  async type(text) {
    await this.page.focus('#composer-input');
    await this.page.keyboard.type(text, { delay: 15 });
  }

  async send(text) {
    if (text) await this.type(text);
    await this.page.keyboard.press('Enter');
  }

  /** Bodies of the messages in the open conversation, each {dir, body, status, delayed}. */
  async messages() {
    return this.page.$$eval('#messages li.message', (items) => items.map((li) => ({
      dir: li.classList.contains('out') ? 'out' : 'in',
      body: li.querySelector('.body').textContent,
      status: li.dataset.status || null,
      delayed: Boolean(li.querySelector('.delayed')),
    })));
  }

  async waitMessage(body, dir = 'in') {
    return waitUntil(`${this.name} to show ${dir} message ${JSON.stringify(body)}`, async () => {
      const found = (await this.messages()).filter((m) => m.body === body && m.dir === dir);
      return found.length ? found : false;
    });
  }

  async typing() {
    const node = await this.page.$('#typing');
    return { state: await node.getAttribute('data-state'), text: await node.textContent() };
  }

  async notices() {
    return this.page.$$eval('#notice-list li', (items) => items.map((li) => ({
      level: li.classList.contains('error') ? 'error' : 'info',
      text: li.querySelector('.notice-text').textContent,
    })));
  }

  async waitNotice(pattern, level = 'error') {
    return waitUntil(`${this.name} to be told ${pattern}`, async () => (await this.notices())
      .find((n) => n.level === level && pattern.test(n.text)));
  }
}

/** A native XMPP user (tests/browser/xmpp_peer.py, slixmpp) in a subprocess. */
class XmppPeer {
  constructor(name, status = '') {
    this.name = name;
    this.jid = `${name}@localhost`;
    this.password = `${name}-secret`;
    this.status = status;
    this.events = [];
    this.stderr = '';
  }

  /** Register over REST, as a person would on the web page before using their desktop client. */
  async register() {
    const response = await fetch(new URL('users', BASE), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ jid: this.name, password: this.password }),
    });
    check(response.status === 201, `registering ${this.name} over REST: HTTP ${response.status}`);
  }

  async start() {
    check(args['c2s-port'], 'the xmpp-peer scenarios need --c2s-port');
    this.process = spawn(args.python, [
      join(HERE, 'xmpp_peer.py'),
      '--port', args['c2s-port'],
      '--jid', `${this.jid}/desktop`,
      '--password', this.password,
      '--status', this.status,
    ], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.process.stderr.on('data', (data) => { this.stderr += data; });
    createInterface({ input: this.process.stdout }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line));
      } catch {
        this.stderr += `${line}\n`;
      }
    });
    await this.waitEvent('to log in', (e) => e.event === 'ready');
  }

  command(object) {
    this.process.stdin.write(`${JSON.stringify(object)}\n`);
  }

  async waitEvent(what, test, timeout = TIMEOUT) {
    return waitUntil(`${this.name} (XMPP) ${what}`, () => {
      const failed = this.events.find((e) => e.event === 'failed');
      if (failed) throw new Error(`${this.name} (XMPP) failed: ${failed.error} ${this.stderr.slice(-500)}`);
      return this.events.find(test);
    }, timeout);
  }

  async stop() {
    if (!this.process || this.process.exitCode !== null) return;
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.command({ cmd: 'quit' });
    this.process.stdin.end();
    const timer = setTimeout(() => this.process.kill(), 3000);
    await exited;
    clearTimeout(timer);
  }
}

// -- scenarios -----------------------------------------------------------------------

/**
 * Two browser users: register, add each other (request and accept), see each other's
 * presence, chat with typing indicators both ways and unread counts; then one loses its
 * socket and sends while offline, and nothing is lost or doubled after it reconnects.
 */
async function twoBrowsers(browser) {
  step('register alice and bob in the browser');
  const alice = await new User(browser, 'alice').open();
  const bob = await new User(browser, 'bob').open();
  await alice.register();
  await bob.register();

  step('alice asks for a contact that does not exist and is told so');
  await alice.addContact('ghost');
  await alice.waitNotice(/no user ghost@localhost/);

  step('alice adds bob; bob accepts the request');
  await alice.addContact('bob');
  await waitUntil('bob to get the request', () => bob.page.$(`#request-list li[data-jid="${alice.jid}"]`));
  await shot(bob.page, '01-bob-contact-request');
  await bob.page.click(`#request-list li[data-jid="${alice.jid}"] button.accept`);

  step('both see each other available');
  await alice.waitContact(bob.jid, 'available', (c) => c.show === 'available');
  await bob.waitContact(alice.jid, 'available', (c) => c.show === 'available');
  check(await bob.page.$(`#request-list li[data-jid="${alice.jid}"]`) === null, 'the request stayed after accepting');

  step('alice sets herself away with a status; bob sees it');
  await alice.page.selectOption('#own-show', 'away');
  await alice.page.fill('#own-status', 'At lunch');
  await alice.page.click('#presence-form button[type=submit]');
  await bob.waitContact(alice.jid, 'away, at lunch', (c) => c.show === 'away' && c.text.includes('At lunch'));

  step('alice writes first; bob has an unread message');
  await alice.openConversation(bob.jid);
  await alice.send('Hello Bob');
  await bob.waitContact(alice.jid, 'with one unread message', (c) => c.unread === 1);
  check((await bob.page.title()).startsWith('(1)'), 'the unread count is not in the title');
  await waitUntil('alice to see her message acknowledged', async () => (await alice.waitMessage('Hello Bob', 'out'))[0].status === 'sent');

  step('bob opens the conversation: the message is there and read');
  await bob.openConversation(alice.jid);
  await bob.waitMessage('Hello Bob');
  await bob.waitContact(alice.jid, 'with no unread message', (c) => c.unread === 0);

  step('alice types: bob sees it, then sees her pause after 5 s idle');
  await alice.type('How are');
  await waitUntil('bob to see alice typing', async () => {
    const t = await bob.typing();
    return t.state === 'composing' && t.text.includes('is typing');
  });
  await shot(bob.page, '02-bob-sees-alice-typing');
  await waitUntil('bob to see alice paused', async () => (await bob.typing()).state === 'paused', 9000);

  step('alice finishes and sends; the indicator goes');
  await alice.send(' you?');
  await bob.waitMessage('How are you?');
  await waitUntil('the typing indicator to clear', async () => (await bob.typing()).state === '');

  step('bob types and replies; alice sees both');
  await bob.type('Fine');
  await waitUntil('alice to see bob typing', async () => (await alice.typing()).state === 'composing');
  await bob.send(', thanks!');
  await alice.waitMessage('Fine, thanks!');
  await waitUntil('alice to see bob stop typing', async () => (await alice.typing()).state === '');
  await shot(alice.page, '03-alice-conversation');

  step('alice loses her connection; both write while she is away');
  await alice.context.setOffline(true); // reconnect attempts fail until the network is back
  const dropped = await control({ control: 'drop', user: alice.jid });
  check(dropped.count >= 1, 'the server had no WebSocket session of alice to drop');
  await waitUntil('alice to notice the lost connection', async () => (await alice.page.getAttribute('#connection', 'data-state')) === 'waiting');
  await alice.send('Sent while offline');
  check((await alice.waitMessage('Sent while offline', 'out'))[0].status === 'sending', 'the queued message is not shown as sending');
  await bob.send('Did you get this?');
  await shot(alice.page, '04-alice-offline');

  step('alice is back: the queued message goes out, the missed one comes in, once each');
  await alice.context.setOffline(false);
  await alice.online();
  await bob.waitMessage('Sent while offline');
  await alice.waitMessage('Did you get this?');
  await waitUntil('the queued message to be acknowledged', async () => (await alice.waitMessage('Sent while offline', 'out'))[0].status === 'sent');
  await bob.waitContact(alice.jid, 'available again', (c) => c.show === 'away');
  // Give any duplicate the time to arrive before counting.
  await new Promise((resolve) => setTimeout(resolve, 500));
  const count = (list, body) => list.filter((m) => m.body === body).length;
  const aliceSees = await alice.messages();
  const bobSees = await bob.messages();
  for (const body of ['Hello Bob', 'How are you?', 'Fine, thanks!', 'Sent while offline', 'Did you get this?']) {
    check(count(aliceSees, body) === 1, `alice shows ${JSON.stringify(body)} ${count(aliceSees, body)} times`);
    check(count(bobSees, body) === 1, `bob shows ${JSON.stringify(body)} ${count(bobSees, body)} times`);
  }
  await shot(alice.page, '05-alice-after-reconnect');

  step('a phone-sized screen shows one pane at a time');
  await bob.page.setViewportSize({ width: 390, height: 740 });
  check(!(await bob.page.isVisible('#contact-list')), 'the contact list is shown beside the conversation on a phone');
  await shot(bob.page, '06-bob-phone-conversation');
  await bob.page.click('#back-button');
  check(await bob.page.isVisible('#contact-list'), 'the back button does not show the contacts');

  step('logout');
  await alice.page.click('#logout-button');
  await alice.page.waitForSelector('#auth-view:not([hidden])');
  check(await alice.page.evaluate(() => sessionStorage.getItem('xmppjson.token')) === null, 'the token outlived logout');
  await bob.waitContact(alice.jid, 'offline', (c) => c.show === 'offline');
  await alice.close();
  await bob.close();
}

/**
 * A browser user and a native XMPP client (slixmpp over c2s): subscription across the doors,
 * presence and status both ways, messages and chat states both ways.
 */
async function xmppPeer(browser) {
  step('dave registers over REST and logs in with an XMPP client');
  const dave = new XmppPeer('dave', 'On my desktop client');
  await dave.register();
  await dave.start();
  try {
    step('carol registers in the browser and adds dave');
    const carol = await new User(browser, 'carol').open();
    await carol.register();
    await carol.addContact('dave');
    // dave's client accepts and asks back; carol's pre-approval answers that at once.
    await dave.waitEvent('to get the request', (e) => e.event === 'subscribe' && e.from.startsWith(carol.jid));
    await carol.waitContact(dave.jid, 'available with his status',
      (c) => c.show === 'available' && c.text.includes('On my desktop client'));
    await dave.waitEvent('to see carol available', (e) => e.event === 'presence' && e.from.startsWith(`${carol.jid}/`) && e.type === 'available');

    step('dave writes from XMPP; carol reads it in the browser');
    dave.command({ cmd: 'send', to: carol.jid, body: 'Hi from XMPP' });
    await carol.waitContact(dave.jid, 'with one unread message', (c) => c.unread === 1);
    await carol.openConversation(dave.jid);
    await carol.waitMessage('Hi from XMPP');

    step('typing notifications both ways');
    dave.command({ cmd: 'state', to: carol.jid, state: 'composing' });
    await waitUntil('carol to see dave typing', async () => (await carol.typing()).state === 'composing');
    await carol.type('Hello');
    await dave.waitEvent('to see carol typing', (e) => e.event === 'chatstate' && e.state === 'composing' && e.from.startsWith(carol.jid));

    step('carol answers from the browser; dave gets it over XMPP');
    await carol.send(' from the browser');
    const got = await dave.waitEvent('to get the answer', (e) => e.event === 'message' && e.body === 'Hello from the browser');
    check(got.from.startsWith(`${carol.jid}/web-`), `the answer came from ${got.from}`);
    check(got.type === 'chat', `the answer has type ${got.type}`);
    await dave.waitEvent('to see carol active', (e) => e.event === 'chatstate' && e.state === 'active');

    step('dave goes away with a status; carol sees it');
    dave.command({ cmd: 'presence', show: 'away', status: 'brb' });
    await carol.waitContact(dave.jid, 'away, brb', (c) => c.show === 'away' && c.text.includes('brb'));
    await shot(carol.page, '01-carol-with-xmpp-dave');

    step('carol removes dave; both subscriptions end, the conversation stays');
    carol.page.once('dialog', (dialog) => dialog.accept());
    await carol.page.click(`${contactSel(dave.jid)} .contact-remove`);
    await carol.waitContact(dave.jid, 'no longer a contact', (c) => c.show === 'stranger');
    await dave.waitEvent('to lose carol', (e) => e.event === 'unsubscribed' && e.from.startsWith(carol.jid));
    await carol.waitMessage('Hi from XMPP');
    await carol.close();
  } finally {
    await dave.stop();
  }
}

/**
 * A message sent while the browser is closed is waiting, marked as delayed, at the next
 * login; a wrong password is refused in words.
 */
async function offlineMessage(browser) {
  step('erin registers in the browser, then closes it');
  let erin = await new User(browser, 'erin').open();
  await erin.register();
  await erin.close();

  step('frank writes to erin from XMPP while her browser is closed');
  const frank = new XmppPeer('frank');
  await frank.register();
  await frank.start();
  try {
    frank.command({ cmd: 'send', to: 'erin@localhost', body: 'Are you there, Erin?' });
    // The server handles a stream's stanzas in order: once the ping is answered, the message
    // has been routed to erin's offline store.
    frank.command({ cmd: 'ping' });
    await frank.waitEvent('to get the ping answered', (e) => e.event === 'pong');
    const bounced = frank.events.find((e) => e.event === 'message-error');
    check(!bounced, `the server refused the offline message: ${JSON.stringify(bounced)}`);
  } finally {
    await frank.stop();
  }

  step('erin opens a new browser: a wrong password is refused in words');
  erin = await new User(browser, 'erin').open();
  await erin.login('not-my-password');
  await waitUntil('the login error', async () => /wrong jid or password/i.test(await erin.page.textContent('#login-error')));
  check(await erin.page.isVisible('#auth-view'), 'a wrong password got past the login form');

  step('erin logs in: frank\'s message is there, unread, marked as sent while she was offline');
  await erin.login();
  await erin.online();
  const c = await erin.waitContact('frank@localhost', 'with one unread message', (x) => x.unread === 1);
  check(c.show === 'stranger', `frank (not a contact) shows as ${c.show}`);
  await erin.openConversation('frank@localhost');
  const [message] = await erin.waitMessage('Are you there, Erin?');
  check(message.delayed, 'the offline message is not marked as delayed');
  await shot(erin.page, '01-erin-offline-message');

  step('erin edits her profile; it is saved on the server');
  await erin.page.click('#profile-button');
  await erin.page.waitForSelector('#profile-dialog[open]');
  await erin.page.fill('#profile-full_name', 'Erin Example');
  await erin.page.fill('#profile-city', 'Gdańsk');
  await shot(erin.page, '02-erin-profile');
  await erin.page.click('#profile-form button[type=submit]');
  await erin.waitNotice(/profile is saved/, 'info');
  check(!(await erin.page.isVisible('#profile-dialog')), 'the profile dialog stayed open after saving');
  const me = await erin.page.evaluate(async () => (await fetch('../me', {
    headers: { Authorization: `Bearer ${sessionStorage.getItem('xmppjson.token')}` },
  })).json());
  check(me.full_name === 'Erin Example' && me.city === 'Gdańsk', `GET /me says ${JSON.stringify(me)}`);

  step('a reload keeps her logged in, and the conversation, without doubling it');
  await erin.page.reload();
  await erin.online();
  await erin.openConversation('frank@localhost');
  await erin.waitMessage('Are you there, Erin?');
  check((await erin.messages()).length === 1, 'the conversation changed over a reload');
  await erin.close();
}

const SCENARIOS = {
  'two-browsers': twoBrowsers,
  'xmpp-peer': xmppPeer,
  'offline-message': offlineMessage,
};

async function main() {
  const scenario = SCENARIOS[args.scenario];
  if (!scenario) throw new Error(`unknown scenario ${args.scenario}; one of ${Object.keys(SCENARIOS).join(', ')}`);
  // A fresh profile per run: Playwright's launch() always starts Chromium in a new temporary
  // --user-data-dir (passing our own is refused); the one below holds crash dumps and cache.
  const scratch = mkdtempSync(join(tmpdir(), 'xmppjson-chromium-'));
  const browser = await chromium.launch({
    executablePath: args.chromium,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--disk-cache-dir=${join(scratch, 'cache')}`, `--crash-dumps-dir=${join(scratch, 'crash')}`,
    ],
  });
  try {
    await scenario(browser);
  } finally {
    await browser.close();
    rmSync(scratch, { recursive: true, force: true });
  }
}

main().then(() => {
  say({ ok: true });
  process.exit(0);
}, (error) => {
  say({ ok: false, error: error.message, step: currentStep, stack: error.stack });
  process.exit(1);
});
