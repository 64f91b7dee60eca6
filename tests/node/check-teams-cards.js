// Validates Teams Workflows bodies as Teams would receive them. Usage:
//   node tests/node/check-teams-cards.js FILE...   (each FILE holds one JSON body)
// For each body: the byte size (must stay under 28 KB, what a Workflows "post card" action
// takes), the strict JSON Schema model in teams-card.schema.json (Adaptive Card 1.4), and
// Microsoft's adaptivecards library parsing the card as a 1.4 host: no parse or validation
// event, and every property survives the library's round trip (one it drops is one it does
// not know). Prints one line per file and "N passed, N failed"; exits 1 on any failure.
"use strict";
const fs = require("fs");
const path = require("path");
const AC = require("adaptivecards/dist/adaptivecards.js");
const Ajv = require("ajv");
const addFormats = require("ajv-formats");

const MAX_BYTES = 28 * 1024;
const schema = JSON.parse(fs.readFileSync(path.join(__dirname, "teams-card.schema.json"), "utf8"));
const ajv = new Ajv({ allErrors: true, strict: true });
addFormats(ajv);
const validate = ajv.compile(schema);

// Properties the library does not carry through its model but that a host reads.
const HOST_ONLY = new Set(["msteams"]);

function lostInRoundTrip(sent, back, at, out) {
  if (Array.isArray(sent)) {
    sent.forEach((v, i) => lostInRoundTrip(v, Array.isArray(back) ? back[i] : undefined, `${at}[${i}]`, out));
    return;
  }
  if (sent === null || typeof sent !== "object") {
    const same = typeof sent === "string" && typeof back === "string"
      ? sent.toLowerCase() === back.toLowerCase() // the library capitalises enum values
      : sent === back;
    if (!same) out.push(`${at}: sent ${JSON.stringify(sent)}, library has ${JSON.stringify(back)}`);
    return;
  }
  for (const [k, v] of Object.entries(sent)) {
    if (HOST_ONLY.has(k)) continue;
    if (back === null || typeof back !== "object" || !(k in back)) {
      // The library omits values equal to its defaults.
      if (v === false || (Array.isArray(v) && v.length === 0)) continue;
      out.push(`${at}.${k}: dropped by the library`);
      continue;
    }
    lostInRoundTrip(v, back[k], `${at}.${k}`, out);
  }
}

function check(text) {
  const errors = [];
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes >= MAX_BYTES) errors.push(`${bytes} bytes, not under ${MAX_BYTES}`);
  let body;
  try {
    body = JSON.parse(text);
  } catch (e) {
    return { bytes, errors: [`not JSON: ${e.message}`] };
  }
  if (!validate(body)) {
    for (const e of validate.errors) errors.push(`schema: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
  }
  const content = body && body.attachments && body.attachments[0] && body.attachments[0].content;
  if (content) {
    const ctx = new AC.SerializationContext(AC.Versions.v1_4);
    const card = new AC.AdaptiveCard();
    card.parse(content, ctx);
    for (let i = 0; i < ctx.eventCount; i++) {
      const e = ctx.getEventAt(i);
      errors.push(`adaptivecards parse: ${AC.ValidationEvent[e.event]}: ${e.message}`);
    }
    const results = card.validateProperties();
    for (const e of results.validationEvents) {
      errors.push(`adaptivecards validate: ${AC.ValidationEvent[e.event]}: ${e.message}`);
    }
    const back = card.toJSON(new AC.SerializationContext(AC.Versions.v1_4));
    lostInRoundTrip(content, back, "card", errors);
  }
  return { bytes, errors };
}

let passed = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  const { bytes, errors } = check(fs.readFileSync(file, "utf8"));
  if (errors.length === 0) {
    passed++;
    console.log(`ok ${path.basename(file)} ${bytes} bytes`);
  } else {
    failed++;
    console.log(`FAIL ${path.basename(file)} ${bytes} bytes`);
    for (const e of errors.slice(0, 20)) console.log(`  ${e}`);
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
