// The template's own JavaScript usage example, verbatim, against chatd with
// our ChatClient. Only its environment is provided: a minimal `document` with
// the two elements it looks up, its `displayMessage` helper, and the address of
// the test server as the default base URL (the template's default is
// http://localhost:8000, where no test server runs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient as RealChatClient } from '../src/chatd.js';
import { startStack } from '../../../tests/e2e/servers.mjs';

// Copied unchanged from the template ("Usage in HTML").
const TEMPLATE_USAGE = `
const chat = new ChatClient();

document.getElementById('send-btn').addEventListener('click', async () => {
  const input = document.getElementById('message-input');
  const message = input.value;

  // Display user message
  displayMessage(message, 'user');

  // Get AI response (with streaming)
  let response = '';
  await chat.chatStream(message, (chunk) => {
    response += chunk;
    displayMessage(response, 'assistant');
  });

  input.value = '';
});
`;

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

function fakeDocument() {
  const elements = {
    'send-btn': { listeners: {}, addEventListener(type, fn) { this.listeners[type] = fn; } },
    'message-input': { value: '' },
  };
  return { elements, getElementById: (id) => elements[id] ?? null };
}

test("the template's usage example runs unchanged: the reply streams into displayMessage", async () => {
  const url = stack.url;
  class ChatClient extends RealChatClient {
    constructor(baseUrl = url) {
      super(baseUrl);
    }
  }
  const document = fakeDocument();
  const shown = [];
  const displayMessage = (text, role) => shown.push([role, text]);
  let chatInstance;
  const Spy = class extends ChatClient {
    constructor(...a) {
      super(...a);
      chatInstance = this; // to check the history afterwards
    }
  };
  new Function('ChatClient', 'document', 'displayMessage', TEMPLATE_USAGE)(Spy, document, displayMessage);

  document.elements['message-input'].value = 'Hello! What can you do? [[fake:{"reply_words":6,"gap_ms":30}]]';
  await document.elements['send-btn'].listeners.click();

  assert.deepEqual(shown[0], ['user', 'Hello! What can you do? [[fake:{"reply_words":6,"gap_ms":30}]]']);
  const assistant = shown.slice(1);
  assert.ok(assistant.length >= 3, `the reply should arrive in several chunks, got ${assistant.length}`);
  assert.ok(assistant.every(([role]) => role === 'assistant'));
  for (let i = 1; i < assistant.length; i++) assert.ok(assistant[i][1].startsWith(assistant[i - 1][1]), 'text grows');
  assert.equal(assistant.at(-1)[1], 'w1 w2 w3 w4 w5 w6');
  assert.equal(document.elements['message-input'].value, '');

  // The rest of the template's client, on the same session.
  const history = await chatInstance.getHistory();
  assert.equal(history.session_id, chatInstance.sessionId);
  assert.equal(history.turn_count, 1);
  assert.equal(history.messages[1].content, 'w1 w2 w3 w4 w5 w6');
  const r = await chatInstance.chat('and again');
  assert.equal(r.response, 'Hello! You said: and again');
  assert.equal(r.turn_count, 2);
  await chatInstance.reset();
  assert.equal((await chatInstance.getHistory()).turn_count, 0);
});

test("the template's test flow (POST /chat, then GET /history) through the client", async () => {
  const c = new RealChatClient(stack.url);
  c.sessionId = 'test-2';
  const r = await c.chat('Test');
  assert.ok('response' in r);
  const h = await c.getHistory();
  assert.ok(h.messages.length > 0);
});
