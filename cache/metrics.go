package cache

import "github.com/prometheus/client_golang/prometheus"

// Reasons a fill is discarded (the reason label of glimpse_cache_fills_discarded_total).
const (
	ReasonSize      = "size"      // the upstream sent more or fewer bytes than the metadata's size
	ReasonChecksum  = "checksum"  // MD5 mismatch
	ReasonHash      = "os_hash"   // os_hash_value mismatch
	ReasonUpstream  = "upstream"  // the upstream answered with an error or broke the transfer
	ReasonDisk      = "disk"      // the cache disk failed (full, I/O error)
	ReasonCancelled = "cancelled" // shutdown or fill timeout
	ReasonDeleted   = "deleted"   // the image was evicted by the admin API while it was filling
)

var discardReasons = []string{ReasonSize, ReasonChecksum, ReasonHash, ReasonUpstream, ReasonDisk, ReasonCancelled, ReasonDeleted}

// Reasons a download goes straight through from the upstream (glimpse_cache_passthrough_total).
const (
	passTooLarge = "too_large" // larger than the whole cache
	passNoRoom   = "no_room"   // other fills hold the room
	passDisk     = "disk"      // the cache disk failed
	passInvalid  = "metadata"  // the metadata cannot verify an entry
)

type metrics struct {
	hits, misses, coalesced prometheus.Counter
	fromCache, fromUpstream prometheus.Counter
	committed               prometheus.Counter
	discarded               *prometheus.CounterVec
	passthrough             *prometheus.CounterVec
	evictions               prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, c *Cache) *metrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "glimpse_cache_requests_total",
		Help: "Image downloads asked of the cache, by result: hit (committed entry), miss (started a fill or went through), coalesced (followed a fill in progress).",
	}, []string{"result"})
	served := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "glimpse_cache_served_bytes_total",
		Help: "Image bytes sent to clients, by source: cache (the disk, including fills in progress) or upstream (passed through).",
	}, []string{"source"})
	m := &metrics{
		hits:         requests.WithLabelValues("hit"),
		misses:       requests.WithLabelValues("miss"),
		coalesced:    requests.WithLabelValues("coalesced"),
		fromCache:    served.WithLabelValues("cache"),
		fromUpstream: served.WithLabelValues("upstream"),
		committed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_cache_fills_committed_total",
			Help: "Fills verified and committed to the cache.",
		}),
		discarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_cache_fills_discarded_total",
			Help: "Fills discarded, by reason: size, checksum, os_hash, upstream, disk, cancelled, deleted.",
		}, []string{"reason"}),
		passthrough: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_cache_passthrough_total",
			Help: "Downloads passed through from the upstream without a fill, by reason: too_large, no_room, disk, metadata.",
		}, []string{"reason"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_cache_evictions_total",
			Help: "Entries evicted to make room for new ones.",
		}),
	}
	for _, r := range discardReasons {
		m.discarded.WithLabelValues(r)
	}
	for _, r := range []string{passTooLarge, passNoRoom, passDisk, passInvalid} {
		m.passthrough.WithLabelValues(r)
	}
	upstreamBytes := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "glimpse_cache_upstream_read_bytes_total",
		Help: "Image bytes read from the upstream, for fills and pass-through.",
	}, func() float64 { return float64(c.upstreamRead.Load()) })
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "glimpse_cache_size_bytes",
		Help: "Bytes of committed entries.",
	}, func() float64 { b, _ := c.usage(); return float64(b) })
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "glimpse_cache_entries",
		Help: "Committed entries.",
	}, func() float64 { _, n := c.usage(); return float64(n) })
	capacity := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "glimpse_cache_capacity_bytes",
		Help: "The byte bound of the cache.",
	}, func() float64 { return float64(c.max) })
	if reg != nil {
		reg.MustRegister(requests, served, m.committed, m.discarded, m.passthrough, m.evictions, upstreamBytes, size, entries, capacity)
	}
	return m
}
