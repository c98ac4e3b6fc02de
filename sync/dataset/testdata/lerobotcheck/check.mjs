// Independent check of a LeRobot v3.0 dataset, re-implementing the loading
// rules of huggingface/lerobot (see LEROBOT_V3.md) over parquet read with
// hyparquet. Usage: node check.mjs DATASET_DIR
// Prints a JSON report; exits 1 with the list of problems if any rule fails.
// The report's "videos" list every (file, query timestamps) pair for the
// frame-decoding check (check_frames.py).
import fs from 'node:fs'
import path from 'node:path'
import { parquetMetadata, parquetReadObjects } from 'hyparquet'

const root = process.argv[2]
const problems = []
const fail = (msg) => problems.push(msg)

function readBuf(p) {
  const b = fs.readFileSync(p)
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)
}

// Top-level columns of a parquet file: name -> {type, list, elementType, repetition}
function columns(meta) {
  const s = meta.schema
  const out = {}
  let i = 1
  const skip = (j) => { // returns index after the subtree at j
    let n = s[j].num_children || 0
    j++
    while (n-- > 0) j = skip(j)
    return j
  }
  let remaining = s[0].num_children
  while (remaining-- > 0) {
    const e = s[i]
    const c = { repetition: e.repetition_type, type: e.type, list: false }
    if (e.num_children) {
      // LIST: <name> (LIST) { repeated group list { element } }
      c.list = e.converted_type === 'LIST' || (e.logical_type && e.logical_type.type === 'LIST')
      const el = s[i + 2]
      c.elementType = el && el.type
      c.elementRepetition = el && el.repetition_type
    }
    out[e.name] = c
    i = skip(i)
  }
  return out
}

function globParquet(dir) {
  // the loader globs <dir>/*/*.parquet sorted by path
  if (!fs.existsSync(dir)) return []
  const out = []
  for (const c of fs.readdirSync(dir).sort()) {
    const cd = path.join(dir, c)
    if (!fs.statSync(cd).isDirectory()) continue
    for (const f of fs.readdirSync(cd).sort()) if (f.endsWith('.parquet')) out.push(path.join(cd, f))
  }
  return out.sort()
}

function fmtPath(tpl, vars) {
  return tpl.replace(/\{(\w+)(?::03d)?\}/g, (m, k) => {
    const v = vars[k]
    if (v === undefined) { fail(`path template ${tpl}: no value for ${k}`); return m }
    return m.includes(':03d') ? String(v).padStart(3, '0') : String(v)
  })
}

const physical = { float32: 'FLOAT', float64: 'DOUBLE', int64: 'INT64', int32: 'INT32', bool: 'BOOLEAN' }

async function main() {
  const info = JSON.parse(fs.readFileSync(path.join(root, 'meta/info.json'), 'utf8'))
  // check_version_compatibility and DatasetInfo
  if (info.codebase_version !== 'v3.0') fail(`codebase_version ${info.codebase_version}`)
  if (!Number.isInteger(info.fps) || info.fps <= 0) fail(`fps ${info.fps}`)
  const fps = info.fps
  for (const k of ['total_episodes', 'total_frames', 'total_tasks', 'chunks_size', 'data_path', 'features', 'splits']) {
    if (!(k in info)) fail(`info.json lacks ${k}`)
  }
  if (info.data_path !== 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet') fail(`data_path ${info.data_path}`)
  const feats = info.features
  for (const [k, dt] of [['timestamp', 'float32'], ['frame_index', 'int64'], ['episode_index', 'int64'], ['index', 'int64'], ['task_index', 'int64']]) {
    if (!feats[k] || feats[k].dtype !== dt || JSON.stringify(feats[k].shape) !== '[1]') fail(`default feature ${k} missing or not ${dt} [1]`)
  }
  const videoKeys = []
  for (const [k, f] of Object.entries(feats)) {
    if (k.includes('/')) fail(`feature key ${k} contains '/'`)
    if (!Array.isArray(f.shape) || !f.shape.every(Number.isInteger)) fail(`feature ${k}: shape ${JSON.stringify(f.shape)}`)
    if (f.dtype === 'video') {
      videoKeys.push(k)
      if (JSON.stringify(f.names) !== '["height","width","channels"]') fail(`video ${k}: names ${JSON.stringify(f.names)}`)
      const vi = f.info || {}
      if (vi['video.height'] !== f.shape[0] || vi['video.width'] !== f.shape[1] || f.shape[2] !== 3) fail(`video ${k}: shape ${f.shape} vs info`)
      if (!['h264', 'hevc', 'av1'].includes(vi['video.codec'])) fail(`video ${k}: codec ${vi['video.codec']}`)
      if (vi['video.fps'] !== fps) fail(`video ${k}: fps ${vi['video.fps']}`)
      if (vi.has_audio !== false) fail(`video ${k}: has_audio`)
    } else if (!(f.dtype in physical) && f.dtype !== 'string') {
      fail(`feature ${k}: dtype ${f.dtype}`)
    }
    if ((k === 'observation.state' || k === 'action') && (!Array.isArray(f.names) || f.names.length !== f.shape[0])) fail(`${k}: names do not match shape`)
  }
  if (videoKeys.length && info.video_path !== 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4') fail(`video_path ${info.video_path}`)
  const nonVideo = Object.keys(feats).filter((k) => feats[k].dtype !== 'video').sort()

  // Data: columns exactly the non-video features, no nulls, types.
  const dataFiles = globParquet(path.join(root, 'data'))
  const rows = []
  const rowFile = []
  for (const f of dataFiles) {
    const buf = readBuf(f)
    const meta = parquetMetadata(buf)
    const cols = columns(meta)
    const names = Object.keys(cols).sort()
    if (JSON.stringify(names) !== JSON.stringify(nonVideo)) fail(`${f}: columns ${names} != features ${nonVideo}`)
    for (const k of nonVideo) {
      const c = cols[k]; const ft = feats[k]
      if (!c) continue
      if (ft.shape.length === 1 && ft.shape[0] === 1 && !(k === 'observation.state' || k === 'action')) {
        if (c.list || c.type !== physical[ft.dtype]) fail(`${f}: ${k} is ${c.type}${c.list ? ' list' : ''}, want scalar ${physical[ft.dtype]}`)
      } else if (!c.list || c.elementType !== physical[ft.dtype]) fail(`${f}: ${k} should be a list of ${physical[ft.dtype]}`)
    }
    const rs = await parquetReadObjects({ file: buf })
    for (const r of rs) { rows.push(r); rowFile.push(f) }
  }
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i]
    for (const k of nonVideo) {
      const v = r[k]
      if (v === null || v === undefined) { fail(`row ${i}: ${k} is null`); continue }
      const ft = feats[k]
      if (Array.isArray(v) && v.length !== ft.shape[0]) fail(`row ${i}: ${k} has ${v.length} values, shape ${ft.shape}`)
    }
    if (Number(r.index) !== i) fail(`row ${i}: index ${r.index}`)
  }
  if (rows.length !== info.total_frames) fail(`total_frames ${info.total_frames}, data has ${rows.length}`)

  // Episodes.
  const epFiles = globParquet(path.join(root, 'meta/episodes'))
  const eps = []
  let epSchema = null
  for (const f of epFiles) {
    const buf = readBuf(f)
    const cols = JSON.stringify(Object.keys(columns(parquetMetadata(buf))).sort())
    if (epSchema && epSchema !== cols) fail(`${f}: episodes schema differs between files`)
    epSchema = cols
    for (const r of await parquetReadObjects({ file: buf })) eps.push({ ...r, _file: f })
  }
  if (eps.length !== info.total_episodes) fail(`total_episodes ${info.total_episodes}, episodes table has ${eps.length}`)
  if (info.splits && info.splits.train !== `0:${info.total_episodes}`) fail(`splits ${JSON.stringify(info.splits)}`)

  // Tasks (pandas layout: the task text is the index column).
  const tbuf = readBuf(path.join(root, 'meta/tasks.parquet'))
  const tmeta = parquetMetadata(tbuf)
  const kv = Object.fromEntries((tmeta.key_value_metadata || []).map((e) => [e.key, e.value]))
  if (!kv.pandas) fail('tasks.parquet: no pandas metadata')
  else if (JSON.stringify(JSON.parse(kv.pandas).index_columns) !== '["task"]') fail('tasks.parquet: pandas index_columns is not ["task"]')
  const tasks = await parquetReadObjects({ file: tbuf })
  tasks.sort((a, b) => Number(a.task_index) - Number(b.task_index))
  tasks.forEach((t, i) => { if (Number(t.task_index) !== i || typeof t.task !== 'string') fail(`tasks row ${i}: ${JSON.stringify(t, (k, v) => typeof v === 'bigint' ? Number(v) : v)}`) })
  if (tasks.length !== info.total_tasks) fail(`total_tasks ${info.total_tasks}, tasks has ${tasks.length}`)

  const videos = [] // {file, key, episode, queries}
  const fileEnd = {} // per video file: frames accounted so far
  let expectFrom = 0
  eps.forEach((e, pos) => {
    const ei = Number(e.episode_index)
    if (ei !== pos) fail(`episodes row ${pos}: episode_index ${ei}`)
    const from = Number(e.dataset_from_index), to = Number(e.dataset_to_index), len = Number(e.length)
    if (from !== expectFrom || to - from !== len) fail(`episode ${ei}: [${from},${to}) length ${len}, expected from ${expectFrom}`)
    expectFrom = to
    const df = path.join(root, fmtPath(info.data_path, { chunk_index: Number(e['data/chunk_index']), file_index: Number(e['data/file_index']) }))
    for (let i = from; i < to && i < rows.length; i++) {
      const r = rows[i]
      if (Number(r.episode_index) !== ei) fail(`row ${i}: episode_index ${r.episode_index}, want ${ei}`)
      if (Number(r.frame_index) !== i - from) fail(`row ${i}: frame_index ${r.frame_index}, want ${i - from}`)
      if (Math.abs(r.timestamp - (i - from) / fps) > 1e-4) fail(`row ${i}: timestamp ${r.timestamp} != frame_index/fps`)
      const ti = Number(r.task_index)
      if (ti < 0 || ti >= tasks.length) fail(`row ${i}: task_index ${ti}`)
      else if (!e.tasks.includes(tasks[ti].task)) fail(`row ${i}: task ${tasks[ti].task} not in episode tasks ${e.tasks}`)
      if (rowFile[i] !== df) fail(`row ${i}: in ${rowFile[i]}, episode says ${df}`)
    }
    for (const k of videoKeys) {
      const vf = path.join(root, fmtPath(info.video_path, { video_key: k, chunk_index: Number(e[`videos/${k}/chunk_index`]), file_index: Number(e[`videos/${k}/file_index`]) }))
      if (!fs.existsSync(vf)) { fail(`episode ${ei}: ${vf} missing`); continue }
      const fromTs = e[`videos/${k}/from_timestamp`], toTs = e[`videos/${k}/to_timestamp`]
      const before = fileEnd[vf] || 0
      if (Math.abs(fromTs - before / fps) > 1e-9) fail(`episode ${ei} ${k}: from_timestamp ${fromTs}, earlier episodes in the file last ${before / fps}`)
      if (Math.abs(toTs - (fromTs + len / fps)) > 1e-9) fail(`episode ${ei} ${k}: to_timestamp ${toTs} != from + length/fps`)
      fileEnd[vf] = before + len
      const queries = []
      for (let i = from; i < to && i < rows.length; i++) queries.push(fromTs + rows[i].timestamp)
      videos.push({ file: vf, key: k, episode: ei, queries })
    }
  })
  if (expectFrom !== rows.length) fail(`episodes cover ${expectFrom} rows, data has ${rows.length}`)

  // stats.json: every non-string feature, LeRobot's statistics.
  const statsPath = path.join(root, 'meta/stats.json')
  const stats = fs.existsSync(statsPath) ? JSON.parse(fs.readFileSync(statsPath, 'utf8')) : null
  if (!stats) fail('no meta/stats.json')
  else {
    for (const [k, f] of Object.entries(feats)) {
      if (f.dtype === 'string') continue
      const s = stats[k]
      if (!s) { fail(`stats.json: no ${k}`); continue }
      for (const n of ['min', 'max', 'mean', 'std', 'count', 'q01', 'q10', 'q50', 'q90', 'q99']) {
        const v = s[n]
        if (!Array.isArray(v)) { fail(`stats.json ${k}.${n} missing`); continue }
        if (n === 'count') continue
        if (f.dtype === 'video') {
          if (v.length !== 3 || !v.every((c) => Array.isArray(c) && c.length === 1 && c[0].length === 1 && c[0][0] >= 0 && c[0][0] <= 1)) fail(`stats.json ${k}.${n}: not (3,1,1) in [0,1]`)
        } else if (v.length !== f.shape[0]) fail(`stats.json ${k}.${n}: ${v.length} values for shape ${f.shape}`)
      }
      if (f.dtype !== 'video' && s.count && s.count[0] !== info.total_frames) fail(`stats.json ${k}.count ${s.count} != total_frames`)
    }
  }
  // Range of every scalar column, for tests to judge fidelity columns.
  const ranges = {}
  for (const k of nonVideo) {
    if (!(feats[k].shape.length === 1 && feats[k].shape[0] === 1) || k === 'observation.state' || k === 'action') continue
    let lo = Infinity, hi = -Infinity, trues = 0
    for (const r of rows) {
      const v = typeof r[k] === 'boolean' ? (r[k] ? 1 : 0) : Number(r[k])
      if (v < lo) lo = v
      if (v > hi) hi = v
      if (r[k] === true) trues++
    }
    ranges[k] = { min: lo, max: hi, trues }
  }
  // Extra (non-LeRobot) episode columns, for tests.
  const extra = eps.map((e) => Object.fromEntries(Object.entries(e).filter(([k]) => k.startsWith('episoded/'))))
  const report = { ok: problems.length === 0, ranges, extra, problems: problems.slice(0, 50), episodes: eps.length, frames: rows.length, tasks: tasks.map((t) => t.task), fps, videos }
  process.stdout.write(JSON.stringify(report, (k, v) => typeof v === 'bigint' ? Number(v) : v))
  process.exit(problems.length ? 1 : 0)
}

main().catch((e) => { console.error(e); process.exit(2) })
