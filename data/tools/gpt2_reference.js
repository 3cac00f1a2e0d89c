// Reference GPT-2 encoder runner for data tests: encodes text with gpt-3-encoder's own Encoder.js
// (the oracle kiln's tokenizer must match token for token) and writes the tokens out.
//
//   node gpt2_reference.js ENCODER_PKG_DIR file  IN.txt  OUT.bin   whole file -> int32 tokens
//   node gpt2_reference.js ENCODER_PKG_DIR cases IN.json OUT.json  JSON array of strings -> array of arrays
//
// "file" mode calls encode() on pieces of the file cut right after a "\n" that is followed by a
// non-whitespace character. Every match of GPT-2's pattern ends there (only whitespace matches hold a
// "\n", and they never hold a non-whitespace character), so the tokens equal those of one encode() of
// the whole text; the cut only avoids Encoder.js's quadratic `bpe_tokens.concat` on megabytes of text.
'use strict';
const fs = require('fs');
const path = require('path');

const [pkg, mode, input, output] = process.argv.slice(2);
if (!pkg || !mode || !input || !output) {
  console.error('usage: node gpt2_reference.js ENCODER_PKG_DIR (file|cases) IN OUT');
  process.exit(2);
}
const { encode } = require(path.resolve(pkg, 'Encoder.js'));

function checkTokens(tokens, where) {
  for (const t of tokens) {
    if (!Number.isInteger(t)) throw new Error(`reference produced a non-token (${t}) for ${where}`);
  }
  return tokens;
}

if (mode === 'file') {
  const text = fs.readFileSync(input, 'utf-8');
  const out = [];
  let start = 0;
  for (let i = 0; i + 1 < text.length; i++) {
    if (text[i] === '\n' && /\S/u.test(text[i + 1])) {
      for (const t of checkTokens(encode(text.slice(start, i + 1)), input)) out.push(t);
      start = i + 1;
    }
  }
  for (const t of checkTokens(encode(text.slice(start)), input)) out.push(t);
  fs.writeFileSync(output, Buffer.from(new Int32Array(out).buffer));
} else if (mode === 'cases') {
  const cases = JSON.parse(fs.readFileSync(input, 'utf-8'));
  const result = cases.map((c, i) => checkTokens(encode(c), `case ${i}`));
  fs.writeFileSync(output, JSON.stringify(result));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
