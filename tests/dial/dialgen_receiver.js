// A webhook receiver that checks `x-dialgen-signature` exactly as Dialgen's documentation
// shows (an Express app with express.json(): req.body is JSON.parse of the request body;
// the signature is the hex HMAC-SHA256 of JSON.stringify(req.body) with the secret).
// Usage: node dialgen_receiver.js ; prints "listening PORT", reads the secret as the first line
// of its standard input (until then it answers 503: the sender retries), then prints one JSON
// line per request: {"path", "valid", "body", "raw", "headers"}. Answers 401 on a bad signature, as the
// example does. It ends when its standard input closes.
'use strict';
const crypto = require('crypto');
const http = require('http');

let secret = null;
let pending = '';

function verifyWebhook(req, secret) {
  const signature = req.headers['x-dialgen-signature'];
  const payload = JSON.stringify(req.body);
  const expectedSignature = crypto.createHmac('sha256', secret).update(payload).digest('hex');
  return signature === expectedSignature;
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf8');
    if (secret === null) {
      res.writeHead(503);
      res.end();
      return;
    }
    try {
      req.body = JSON.parse(raw);
    } catch (error) {
      req.body = undefined;
    }
    const valid = req.body !== undefined && verifyWebhook(req, secret);
    process.stdout.write(JSON.stringify({ path: req.url, valid, body: req.body, raw, headers: req.headers }) + '\n');
    res.writeHead(valid ? 200 : 401, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(valid ? { received: true } : { error: 'Invalid signature' }));
  });
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
process.stdin.setEncoding('utf8');
process.stdin.on('data', (text) => {
  pending += text;
  const newline = pending.indexOf('\n');
  if (secret === null && newline >= 0) secret = pending.slice(0, newline);
});
process.stdin.on('end', () => process.exit(0)); // the test closes stdin to stop it
