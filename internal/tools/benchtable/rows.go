package main

// Rows are the lines of the `make bench` table, in print order. Each names
// one benchmark and the b.ReportMetric units it reports: our value, the
// same-run peer's value, and the ratio (when the benchmark reports one;
// otherwise the table divides value by peer, run by run). A goal judges
// the median over runs of either the value or the ratio.
//
// To add a row for a new benchmark: report the figures with
// b.ReportMetric(value, unit) and add a Row here in a small commit. Pkg is
// the package path inside the module; Bench is the full name as go test
// prints it, without the -GOMAXPROCS suffix (sub-benchmarks included:
// "BenchmarkHubPublish/viewers=1").
var Rows = []Row{
	// storage (docs/benchmarks/storage.md)
	{Figure: "storage: 100 KB frames, 8 streams, vs raw write+fdatasync", Pkg: "storage", Bench: "BenchmarkAppendFrames",
		Unit: "MB/s", Peer: "raw-MB/s", Ratio: "x-raw", Goal: RatioAtLeast(0.7)},
	{Figure: "storage: 200 B records, 50 streams", Pkg: "storage", Bench: "BenchmarkAppendSmall",
		Unit: "records/s", Goal: ValueAtLeast(1_000_000)},
	{Figure: "storage: Append→durable p99 at 50k records/s paced (sync_interval 100 ms)", Pkg: "storage", Bench: "BenchmarkCommitTail",
		Unit: "p99-durable-ms", Goal: ValueAtMost(150)},

	// ingest (docs/benchmarks/ingest.md): ratio to a channel hand-off
	{Figure: "ingest: per-sample alignment (device clock)", Pkg: "ingest", Bench: "BenchmarkStreamProcess/device",
		Unit: "ns/sample", Ratio: "x_chan_handoff", Goal: ValueAtMost(1000)},
	{Figure: "ingest: whole episode path per sample", Pkg: "ingest", Bench: "BenchmarkEpisodePath",
		Unit: "ns/sample", Ratio: "x_chan_handoff", Goal: ValueAtMost(1000)},

	// RTSP (docs/benchmarks/rtsp.md): the built daemon storing to disk,
	// steady state, against 8 ffmpeg -c copy -f mpegts in the same run
	{Figure: "RTSP: daemon storing 8×1080p30 to disk, CPU vs 8 ffmpeg -c copy -f mpegts (steady state)", Pkg: "devices/rtsp", Bench: "BenchmarkDaemonRecord8Cameras",
		Unit: "daemon-cpu-s/stream-min", Peer: "ffmpeg-cpu-s/stream-min", Ratio: "x-ffmpeg", Goal: RatioAtMost(1.0)},
	{Figure: "RTSP: daemon, frames sent but not stored", Pkg: "devices/rtsp", Bench: "BenchmarkDaemonRecord8Cameras",
		Unit: "dropped-frames", Goal: ValueAtMost(0)},
	{Figure: "RTSP: 8×1080p30, bare cameras (sink discards), CPU vs 8 ffmpeg -c copy", Pkg: "devices/rtsp", Bench: "BenchmarkRecord8Streams",
		Unit: "cpu-s/stream-min", Peer: "ffmpeg-cpu-s/stream-min", Ratio: "cpu-ratio", Goal: RatioAtMost(1.0)},
	{Figure: "RTSP: bare cameras, steady-state CPU ratio (after 5 s)", Pkg: "devices/rtsp", Bench: "BenchmarkRecord8Streams",
		Unit: "steady-cpu-ratio", Goal: ValueAtMost(1.0)},
	{Figure: "RTSP: bare cameras, dropped frames", Pkg: "devices/rtsp", Bench: "BenchmarkRecord8Streams",
		Unit: "dropped-frames", Goal: ValueAtMost(0)},

	// memory of the whole daemon (docs/BENCHMARKS.md): the built binary
	// recording 8 1080p30 cameras, telemetry and lidar for RSS_DURATION
	{Figure: "memory: daemon peak RSS (VmHWM), 8×1080p30 + telemetry + lidar", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonRSS8Cameras",
		Unit: "peak-RSS-MB", Goal: ValueAtMost(100)},
	{Figure: "memory: daemon RSS at the end", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonRSS8Cameras",
		Unit: "final-RSS-MB", Goal: ValueAtMost(100)},
	{Figure: "memory: RSS slope over the second half (flat ≈ 0)", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonRSS8Cameras",
		Unit: "slope-MB/min", Goal: ValueAtMost(1)},
	{Figure: "memory: RSS growth, last third over middle third (medians; 1 MB/min leak = 3.3 MB in 10 min)", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonRSS8Cameras",
		Unit: "growth-last-third-MB", Goal: ValueAtMost(2)},
	{Figure: "memory: same, RSS minus Pebble's memtables and block cache", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonRSS8Cameras",
		Unit: "growth-ex-pebble-last-third-MB", Goal: ValueAtMost(2)},

	// MQTT (docs/benchmarks/mqtt.md)
	// Both consume at once here too, so both run at the publishers' rate
	// (46k msg/s in wave 4, each 1.00x of it): the ratio is reported, not
	// judged, as for the built daemon below; the rate goal is judged with
	// each consumer alone (BenchmarkDaemonMQTT).
	{Figure: "MQTT (in process, both subscribed): stored rate vs mosquitto_sub -q 1", Pkg: "devices/mqtt", Bench: "BenchmarkMQTTRecordVsMosquittoSub",
		Unit: "stored_msg/s", Peer: "sub_msg/s", Ratio: "stored/sub"},
	{Figure: "MQTT (in process, both subscribed): stored rate vs the publishers' rate", Pkg: "devices/mqtt", Bench: "BenchmarkMQTTRecordVsMosquittoSub",
		Unit: "stored_msg/s", Peer: "pub_msg/s"},
	{Figure: "MQTT: CPU for the same messages vs mosquitto_sub", Pkg: "devices/mqtt", Bench: "BenchmarkMQTTRecordVsMosquittoSub",
		Unit: "cpu_ours_s", Peer: "cpu_sub_s", Ratio: "cpu_ours/sub", Goal: RatioAtMost(1.0)},

	{Figure: "MQTT, built daemon alone: CPU per stored message vs mosquitto_sub alone", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "cpu-ns/msg", Peer: "sub-cpu-ns/msg", Ratio: "x-mosquitto_sub", Goal: RatioAtMost(1.0)},
	{Figure: "MQTT, built daemon alone: stored rate vs mosquitto_sub alone", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "stored-msg/s", Peer: "sub-msg/s", Ratio: "stored/sub", Goal: RatioAtLeast(1.0)},
	{Figure: "MQTT, daemon and mosquitto_sub both subscribed: CPU ratio", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "both-x-mosquitto_sub", Goal: ValueAtMost(1.0)},
	// Both subscribed, both consumers run at the publishers' rate (capped
	// by them), so the rate ratio is reported, not judged: the rate goal
	// is judged alone, above (docs/benchmarks/mqtt.md).
	{Figure: "MQTT, daemon and mosquitto_sub both subscribed: stored rate ratio", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "both-stored/sub"},
	{Figure: "MQTT, both subscribed: daemon's stored rate vs the publishers' rate", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "both-stored/published"},
	{Figure: "MQTT, both subscribed: mosquitto_sub's rate vs the publishers' rate", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "both-sub/published"},
	{Figure: "MQTT publish→durable p99 at half the ceiling vs sync_interval+50ms", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "p99-durable-ms", Ratio: "p99/target", Goal: RatioAtMost(1.0)},
	{Figure: "MQTT publish→durable p99: the daemon's part (PUBLISH read → PUBACK)", Pkg: "cmd/episoded", Bench: "BenchmarkDaemonMQTT",
		Unit: "p99-in-daemon-ms"},

	// export and upload (docs/benchmarks/sync.md)
	{Figure: "upload at daemon defaults, staging included (500 MB episode → versitygw) vs the faster rclone copy", Pkg: "sync/upload", Bench: "BenchmarkUploadDefaults",
		Unit: "ours_MB/s", Peer: "rclone_best_MB/s", Ratio: "ratio_vs_best_rclone", Goal: RatioAtLeast(1.0)},
	{Figure: "export: episode to MCAP vs reading it back", Pkg: "sync/upload", Bench: "BenchmarkExport",
		Unit: "export_MB/s", Peer: "merge_read_MB/s", Ratio: "ratio_vs_read"},

	// datasets (docs/benchmarks/dataset.md)
	{Figure: "dataset build, remux vs copying the bytes", Pkg: "sync/dataset", Bench: "BenchmarkRemux",
		Unit: "build-ms", Peer: "copy-ms", Ratio: "x-copy"},
	{Figure: "dataset build, re-encode vs ffmpeg alone", Pkg: "sync/dataset", Bench: "BenchmarkReencode",
		Unit: "build-ms", Peer: "ffmpeg-ms", Ratio: "x-ffmpeg"},

	// WebRTC (docs/benchmarks/webrtc.md)
	{Figure: "WebRTC hub publish, 1 stuck viewer", Pkg: "devices/webrtc", Bench: "BenchmarkHubPublish/viewers=1",
		Unit: "ns/op", Peer: "baseline-ns/op", Ratio: "x-baseline"},
	{Figure: "WebRTC hub publish, 16 viewers", Pkg: "devices/webrtc", Bench: "BenchmarkHubPublish/viewers=16",
		Unit: "ns/op", Peer: "baseline-ns/op", Ratio: "x-baseline"},
	{Figure: "WHIP RTP→access units vs bare depacketizer", Pkg: "devices/webrtc", Bench: "BenchmarkWHIPAssemble",
		Unit: "frames/s", Ratio: "x-baseline"},
	{Figure: "WHEP first frame vs ICE+DTLS connect", Pkg: "devices/webrtc", Bench: "BenchmarkWHEPFirstFrame",
		Unit: "ms-first-frame", Peer: "ms-connect", Ratio: "x-baseline"},

	// episode close (docs/benchmarks/close.md)
	{Figure: "close 10-min 8-camera episode vs reading it with payloads", Pkg: "internal/lifecycle", Bench: "BenchmarkCloseWhileRecording",
		Unit: "close_ms", Peer: "full_read_ms"},
	{Figure: "close while recording: dropped frames", Pkg: "internal/lifecycle", Bench: "BenchmarkCloseWhileRecording",
		Unit: "drops", Goal: ValueAtMost(0)},

	// replay (docs/benchmarks/replay.md)
	{Figure: "replay p99 send-time error vs bare timer loop", Pkg: "internal/replay", Bench: "BenchmarkReplayTiming",
		Unit: "p99-ms", Peer: "baseline-p99-ms", Ratio: "ratio", Goal: ValueAtMost(5)},

	// simulator (docs/benchmarks/sim.md)
	{Figure: "simulator: one simulated second vs copying its bytes", Pkg: "internal/sim", Bench: "BenchmarkSimulatedSecond",
		Unit: "%core", Ratio: "x_copy", Goal: ValueAtMost(1)},
	{Figure: "simulator: ground-truth lookup vs one clock evaluation", Pkg: "internal/sim", Bench: "BenchmarkTruth",
		Unit: "ns/op", Ratio: "x_clock_eval"},

	// dashboard
	{Figure: "dashboard handler vs http.FileServerFS", Pkg: "internal/dashboard", Bench: "BenchmarkHandler/Handler",
		Unit: "ns/op", Ratio: "x_baseline"},
}
