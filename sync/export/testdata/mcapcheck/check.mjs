// check.mjs validates an MCAP file with the official TypeScript reader
// (@mcap/core) and prints a JSON report on stdout. It is code no one in
// episoded wrote, so it independently checks what sync/export produces.
//
//   node check.mjs FILE.mcap
//
// Two passes:
//  1. McapStreamReader with validateCrcs: every record, every chunk CRC.
//  2. McapIndexedReader: summary, chunk indexes, message indexes,
//     metadata and attachment indexes.
// For foxglove.CompressedVideo messages the protobuf is decoded minimally
// (fields 3 data and 4 format) and the data checked to be Annex-B with the
// parameter sets in front of every keyframe; the first message of each
// video channel is reported (keyframe, with parameter sets). The indexed
// pass reports, per topic, how often the message sequence (the stream's
// seq, i.e. the order the device sent) goes backwards in log-time order.
import { readFile, open } from "node:fs/promises";
import { McapStreamReader, McapIndexedReader } from "@mcap/core";
import { loadDecompressHandlers } from "@mcap/support";

const file = process.argv[2];
const decompressHandlers = await loadDecompressHandlers();

function readVarint(buf, pos) {
  let result = 0n, shift = 0n;
  for (;;) {
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

// decodeFields returns {fieldNumber: [values]} for one protobuf message;
// length-delimited values are Uint8Array.
function decodeFields(buf) {
  const out = {};
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const num = Number(key >> 3n), wt = Number(key & 7n);
    let v;
    if (wt === 0) [v, pos] = readVarint(buf, pos);
    else if (wt === 1) { v = buf.subarray(pos, pos + 8); pos += 8; }
    else if (wt === 5) { v = buf.subarray(pos, pos + 4); pos += 4; }
    else if (wt === 2) { let n; [n, pos] = readVarint(buf, pos); v = buf.subarray(pos, pos + Number(n)); pos += Number(n); }
    else throw new Error(`unsupported wire type ${wt}`);
    (out[num] ??= []).push(v);
  }
  return out;
}

function splitAnnexB(d) {
  if (!(d[0] === 0 && d[1] === 0 && d[2] === 0 && d[3] === 1)) return null;
  const nals = [];
  let start = 4;
  for (let i = 4; i + 3 <= d.length; i++) {
    if (d[i] === 0 && d[i + 1] === 0 && d[i + 2] === 1) {
      let end = i;
      while (end > start && d[end - 1] === 0) end--;
      nals.push(d.subarray(start, end));
      start = i + 3; i += 2;
    }
  }
  nals.push(d.subarray(start));
  return nals;
}

function checkVideo(data, format, st) {
  const nals = splitAnnexB(data);
  const first = st.annexB + st.notAnnexB === 0;
  if (first) st.first = { keyframe: false, withParams: false };
  if (!nals) { st.notAnnexB++; return; }
  st.annexB++;
  const hevc = format === "h265";
  const types = nals.map((n) => (hevc ? (n[0] >> 1) & 0x3f : n[0] & 0x1f));
  const irap = types.findIndex((t) => (hevc ? t >= 16 && t <= 21 : t === 5));
  if (irap < 0) return;
  st.keyframes++;
  const before = types.slice(0, irap);
  const ok = hevc
    ? before.includes(32) && before.includes(33) && before.includes(34)
    : before.includes(7) && before.includes(8);
  if (ok) st.keyframesWithParams++;
  if (first) st.first = { keyframe: true, withParams: ok };
}

const report = { stream: {}, indexed: {}, errors: [] };

// Pass 1: stream reader with CRC validation.
try {
  const bytes = await readFile(file);
  const reader = new McapStreamReader({ validateCrcs: true, decompressHandlers });
  reader.append(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  const schemas = new Map(), channels = new Map(), counts = {}, recordCounts = {}, video = {};
  let lastLogTime = -1n, outOfOrder = 0, records = 0;
  for (let rec; (rec = reader.nextRecord()); ) {
    records++;
    recordCounts[rec.type] = (recordCounts[rec.type] ?? 0) + 1;
    if (rec.type === "Schema") schemas.set(rec.id, rec);
    if (rec.type === "Channel") channels.set(rec.id, rec);
    if (rec.type === "Header") report.stream.header = { profile: rec.profile, library: rec.library };
    if (rec.type === "Message") {
      const ch = channels.get(rec.channelId);
      counts[ch.topic] = (counts[ch.topic] ?? 0) + 1;
      if (rec.logTime < lastLogTime) outOfOrder++;
      lastLogTime = rec.logTime;
      const schema = schemas.get(ch.schemaId);
      if (schema?.name === "foxglove.CompressedVideo") {
        const f = decodeFields(rec.data);
        const format = new TextDecoder().decode(f[4]?.[0] ?? new Uint8Array());
        const st = (video[ch.topic] ??= { format, annexB: 0, notAnnexB: 0, keyframes: 0, keyframesWithParams: 0 });
        checkVideo(f[3]?.[0] ?? new Uint8Array(), format, st);
      }
    }
  }
  report.stream.done = reader.done();
  report.stream.records = records;
  report.stream.recordCounts = recordCounts;
  report.stream.counts = counts;
  report.stream.outOfOrder = outOfOrder;
  report.stream.video = video;
  report.stream.channels = [...channels.values()].map((c) => ({
    id: c.id, topic: c.topic, messageEncoding: c.messageEncoding,
    schema: schemas.get(c.schemaId)?.name ?? "", schemaEncoding: schemas.get(c.schemaId)?.encoding ?? "",
  }));
} catch (e) {
  report.errors.push(`stream reader: ${e.message}`);
}

// Pass 2: indexed reader.
try {
  const fh = await open(file, "r");
  const size = BigInt((await fh.stat()).size);
  const readable = {
    size: async () => size,
    read: async (offset, length) => {
      const buf = Buffer.alloc(Number(length));
      await fh.read(buf, 0, Number(length), Number(offset));
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    },
  };
  const reader = await McapIndexedReader.Initialize({ readable, decompressHandlers });
  const counts = {}, lastSeq = {}, seqOutOfOrder = {};
  let lastLogTime = -1n, outOfOrder = 0;
  for await (const m of reader.readMessages({ validateCrcs: true })) {
    const ch = reader.channelsById.get(m.channelId);
    counts[ch.topic] = (counts[ch.topic] ?? 0) + 1;
    if (m.logTime < lastLogTime) outOfOrder++;
    lastLogTime = m.logTime;
    // The sequence is the stream's seq, numbered in the order the device
    // sent the samples (decode order for video).
    seqOutOfOrder[ch.topic] ??= 0;
    if (lastSeq[ch.topic] !== undefined && m.sequence <= lastSeq[ch.topic]) seqOutOfOrder[ch.topic]++;
    lastSeq[ch.topic] = m.sequence;
  }
  report.indexed.counts = counts;
  report.indexed.outOfOrder = outOfOrder;
  report.indexed.seqOutOfOrder = seqOutOfOrder;
  report.indexed.chunks = reader.chunkIndexes.length;
  report.indexed.chunkCompression = [...new Set(reader.chunkIndexes.map((c) => c.compression))];
  report.indexed.statisticsMessageCount = Number(reader.statistics?.messageCount ?? -1n);
  report.indexed.metadata = [];
  for await (const md of reader.readMetadata({ name: "episode" })) {
    report.indexed.metadata.push({ name: md.name, keys: [...md.metadata.keys()].sort(), manifest: JSON.parse(md.metadata.get("manifest")) });
  }
  report.indexed.attachments = [];
  for await (const a of reader.readAttachments({ validateCrcs: true })) {
    report.indexed.attachments.push({ name: a.name, mediaType: a.mediaType, size: a.data.length });
  }
  report.indexed.schemas = [...reader.schemasById.values()].map((s) => ({ name: s.name, encoding: s.encoding, size: s.data.length }));
  await fh.close();
} catch (e) {
  report.errors.push(`indexed reader: ${e.message}`);
}

process.stdout.write(JSON.stringify(report) + "\n");
