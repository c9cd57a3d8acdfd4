// A choreo saga participant in Node.js, written from docs/wire-format.md alone.
//
// It plays the "hold" step of tests/procs/conformance_app.py's saga: HoldRequested ->
// FundsHeld (or HoldRefused, outcome failed, when the amount is over 1000), and its
// compensation ReleaseHold -> HoldReleased. `choreo conformance` checks it in
// tests/test_conformance.py.
//
// Environment: BROKERS (host:port,...), SERVICE (default node-hold), GROUP (default
// choreo.<SERVICE>), TOPIC (default test.conformance).
//
// The barrier lives in memory here, to keep the example short: a real participant MUST
// keep it in durable storage, written in the same transaction as its effects, for as
// long as an input can be redelivered (rules 10 and 11).
"use strict";

const crypto = require("node:crypto");
const { Kafka, Partitioners, logLevel } = require("kafkajs");

const SERVICE = process.env.SERVICE || "node-hold";
const GROUP = process.env.GROUP || `choreo.${SERVICE}`;
const TOPIC = process.env.TOPIC || "test.conformance";
const STEP = "hold";
const LIMIT = 1000;
const SYSTEM_TOPIC = "choreo.system";
const DLQ_TOPIC = "choreo.dlq";
// Types that exist on our topics but are not ours to handle: skipped (rule 15).
const HANDLED = new Set(["HoldRequested", "ReleaseHold"]);

// (gid, step, op) -> {status, records}: the events a run published, as published (rule 10).
const barrier = new Map();
let held = 0; // the effect: what is held, over all accounts

// Rule 5: one id per event, the same when it is published again.
function eventId(causeId, op, index) {
  const digest = crypto
    .createHash("sha256")
    .update(`${causeId}/${SERVICE}/${STEP}/${op}/${index}`)
    .digest();
  const b = Buffer.from(digest.subarray(0, 16));
  b[6] = (b[6] & 0x0f) | 0x80; // version 8
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 9562 variant
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function text(headers, name) {
  const value = headers[name];
  if (value === undefined || value === null) return "";
  return Buffer.isBuffer(value) ? value.toString("utf8") : String(value);
}

// Every envelope header, even the empty ones (the wire format's table).
function record(topic, gid, env, payload) {
  return {
    topic,
    message: {
      key: gid, // rule 1: key = gid; kafkajs' default partitioner is murmur2 (rule 14)
      value: JSON.stringify(payload),
      headers: {
        "choreo-type": env.type,
        "choreo-id": env.id,
        "choreo-gid": gid,
        "choreo-saga": env.saga,
        "choreo-step": STEP,
        "choreo-op": env.op,
        "choreo-outcome": env.outcome,
        "choreo-causation": env.causation,
        "choreo-occurred-at": String(Date.now()),
        "choreo-version": "1",
        "choreo-attempt": "1",
        "choreo-source": SERVICE,
        traceparent: env.traceparent,
      },
    },
  };
}

function childTraceparent(parent) {
  const span = crypto.randomBytes(8).toString("hex");
  if (/^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/.test(parent)) {
    return `${parent.slice(0, 36)}${span}${parent.slice(52)}`;
  }
  return `00-${crypto.randomBytes(16).toString("hex")}-${span}-01`;
}

function deadLetter(message, topic, partition, reason) {
  const headers = { ...message.headers };
  Object.assign(headers, {
    "choreo-dlq-reason": reason,
    "choreo-dlq-kind": "poison",
    "choreo-dlq-service": SERVICE,
    "choreo-dlq-handler": STEP,
    "choreo-dlq-attempts": "1",
    "choreo-dlq-topic": topic,
    "choreo-dlq-partition": String(partition),
    "choreo-dlq-offset": String(message.offset),
    "choreo-dlq-at": String(Date.now()),
  });
  return { topic: DLQ_TOPIC, message: { key: message.key, value: message.value, headers } };
}

// What one input makes us publish (empty: nothing), the barrier applied.
function handle(message, topic, partition) {
  const h = message.headers || {};
  const type = text(h, "choreo-type");
  const replayFor = text(h, "choreo-replay-for");
  if (!HANDLED.has(type) || (replayFor && replayFor !== SERVICE)) return []; // rules 15, 16
  const gid = text(h, "choreo-gid") || (message.key ? message.key.toString("utf8") : "");
  let data;
  try {
    data = JSON.parse(message.value.toString("utf8"));
  } catch (err) {
    return [deadLetter(message, topic, partition, `payload is not JSON: ${err.message}`)];
  }
  const valid =
    data !== null && typeof data === "object" && typeof data.account === "string" &&
    Number.isInteger(data.amount) && (type === "ReleaseHold" || data.amount > 0);
  if (!gid || !valid) {
    return [deadLetter(message, topic, partition, `not a valid ${type}`)];
  }
  const op = type === "HoldRequested" ? "action" : "compensate";
  const key = (o) => `${gid}\u0000${STEP}\u0000${o}`;
  const env = {
    saga: text(h, "choreo-saga"),
    op,
    causation: text(h, "choreo-id") || `${topic}/${partition}/${message.offset}`,
    traceparent: childTraceparent(text(h, "traceparent")),
  };
  env.id = eventId(env.causation, op, 0);
  const stored = barrier.get(key(op));
  if (stored) return stored.records; // a duplicate: the same events, same ids
  if (op === "action") {
    if (barrier.has(key("compensate"))) return []; // hanging: never runs
    if (data.amount > LIMIT) {
      const reason = `${data.amount} is over the limit ${LIMIT}`;
      const out = [record(TOPIC, gid, { ...env, type: "HoldRefused", outcome: "failed" },
        { account: data.account, reason })];
      barrier.set(key(op), { status: "failed", records: out });
      return out;
    }
    held += data.amount;
    const out = [record(TOPIC, gid, { ...env, type: "FundsHeld", outcome: "done" },
      { account: data.account, amount: data.amount })];
    barrier.set(key(op), { status: "done", records: out });
    return out;
  }
  const action = barrier.get(key("action"));
  if (!action || action.status !== "done") {
    // null compensation (or of a failed action): confirmed without running
    const out = [record(SYSTEM_TOPIC, gid,
      { ...env, type: "choreo.CompensationSkipped", outcome: "skipped" },
      { step: STEP, reason: "the action never ran" })];
    barrier.set(key(op), { status: "done", records: out });
    return out;
  }
  held -= data.amount;
  const out = [record(TOPIC, gid, { ...env, type: "HoldReleased", outcome: "done" },
    { account: data.account })];
  barrier.set(key(op), { status: "done", records: out });
  return out;
}

async function main() {
  const kafka = new Kafka({
    clientId: SERVICE,
    brokers: (process.env.BROKERS || "127.0.0.1:9092").split(","),
    logLevel: logLevel.WARN,
  });
  const producer = kafka.producer({
    idempotent: true, // with acks=all below (rule 12)
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false, // rule 14: choreo creates topics
    createPartitioner: Partitioners.DefaultPartitioner, // murmur2, as Java's
  });
  const consumer = kafka.consumer({
    groupId: GROUP, // rule 13
    readUncommitted: false, // read_committed (rule 12)
    allowAutoTopicCreation: false,
  });
  await producer.connect();
  await consumer.connect();
  await consumer.subscribe({ topic: TOPIC, fromBeginning: true }); // new groups: earliest
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ topic, partition, message }) => {
      const out = handle(message, topic, partition);
      for (const { topic: target, message: m } of out) {
        await producer.send({ topic: target, acks: -1, messages: [m] });
      }
      // rule 12: the offset only after the barrier is written and every output acknowledged
      const next = (BigInt(message.offset) + 1n).toString();
      await consumer.commitOffsets([{ topic, partition, offset: next }]);
    },
  });
  console.log(`${SERVICE}: consuming ${TOPIC} as ${GROUP}`);
  const stop = async () => {
    await consumer.disconnect();
    await producer.disconnect();
    console.log(`${SERVICE}: stopped; held ${held}`);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
