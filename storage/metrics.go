package storage

import "github.com/prometheus/client_golang/prometheus"

// metrics are the store's Prometheus metrics. They always exist; they are
// registered only when Options.Registerer is not nil.
type metrics struct {
	reg              prometheus.Registerer
	cs               []prometheus.Collector
	bytesWritten     prometheus.Counter
	samplesWritten   prometheus.Counter
	commitSeconds    prometheus.Histogram
	commitErrors     prometheus.Counter
	pendingBytes     prometheus.Gauge
	diskBytes        prometheus.Gauge
	freeBytes        prometheus.Gauge
	full             prometheus.Gauge
	evictions        *prometheus.CounterVec
	evictedBytes     *prometheus.CounterVec
	rejected         prometheus.Counter
	overloaded       prometheus.Counter
	stalls           prometheus.Counter
	stallSeconds     prometheus.Counter
	compactions      prometheus.Counter
	flushes          prometheus.Counter
	backgroundErrors prometheus.Counter
	memtableBytes    prometheus.Gauge
	cacheBytes       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reg: reg,
		bytesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_bytes_written_total", Help: "Sample bytes (payload plus record overhead) committed durably."}),
		samplesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_samples_written_total", Help: "Samples committed durably."}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "episoded_storage_commit_seconds", Help: "Latency of one durable commit (segment writes and fsyncs plus the synced Pebble batch).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_commit_errors_total", Help: "Commits that failed; their samples were reported failed to producers."}),
		pendingBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "episoded_storage_pending_bytes", Help: "Bytes queued for commit, including the commit in flight."}),
		diskBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "episoded_storage_disk_bytes", Help: "Bytes the store uses on disk (Pebble plus segment files)."}),
		freeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "episoded_storage_free_bytes", Help: "Bytes available on the store's filesystem."}),
		full: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "episoded_storage_full", Help: "1 while the store refuses new samples because it is full."}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_storage_evictions_total", Help: "Evictions by reason: timeline, retention, quota_uploaded, quota_not_uploaded."}, []string{"reason"}),
		evictedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "episoded_storage_evicted_bytes_total", Help: "Bytes reclaimed by eviction, by reason."}, []string{"reason"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_rejected_samples_total", Help: "Samples refused because the store is full."}),
		overloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_overloaded_samples_total", Help: "Samples refused after AppendTimeout under backpressure."}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_write_stalls_total", Help: "Pebble write stalls (memtables or L0 full)."}),
		memtableBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "episoded_storage_memtable_bytes", Help: "Bytes Pebble's memtables hold, outside the Go heap (C memory, resident): at most 2 memtables plus one kept for reuse; updated by the space watcher."}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "episoded_storage_block_cache_bytes", Help: "Bytes in Pebble's block cache, outside the Go heap (C memory, resident; at most CacheSize, 8 MiB); updated by the space watcher."}),
		stallSeconds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_write_stall_seconds_total", Help: "Time spent in Pebble write stalls."}),
		compactions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_compactions_total", Help: "Pebble compactions finished."}),
		flushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_flushes_total", Help: "Pebble memtable flushes finished."}),
		backgroundErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "episoded_storage_background_errors_total", Help: "Pebble background errors (failed flushes or compactions, e.g. ENOSPC)."}),
	}
	m.cs = []prometheus.Collector{m.bytesWritten, m.samplesWritten, m.commitSeconds, m.commitErrors, m.pendingBytes,
		m.diskBytes, m.freeBytes, m.full, m.evictions, m.evictedBytes, m.rejected, m.overloaded, m.stalls,
		m.stallSeconds, m.compactions, m.flushes, m.backgroundErrors, m.memtableBytes, m.cacheBytes}
	return m
}

func (m *metrics) register(s *Store) {
	if m.reg == nil {
		return
	}
	for _, c := range m.cs {
		if err := m.reg.Register(c); err != nil {
			s.log.Warn("register metric", "err", err)
		}
	}
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.cs {
		m.reg.Unregister(c)
	}
}
