// Reads JSON lines on stdin; writes JSON.stringify(JSON.parse(line)) for each, one per line.
'use strict';
const readline = require('readline');
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => process.stdout.write(JSON.stringify(JSON.parse(line)) + '\n'));
