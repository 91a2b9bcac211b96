package proxy

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	requests   *prometheus.CounterVec
	auth       *prometheus.CounterVec
	uploads    *prometheus.CounterVec
	prefetches *prometheus.CounterVec
	queued     prometheus.Gauge
}

var routes = []string{"download", "upload", "forward", "admin", "healthcheck"}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_proxy_requests_total",
			Help: "Requests answered, by route (download, upload, forward, admin, healthcheck), method and status code.",
		}, []string{"route", "method", "code"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_proxy_auth_checks_total",
			Help: "Authorization checks of downloads, by result: allowed (the upstream said 200 for an active image), cached (a yes kept for the auth TTL), denied (any other status), inactive (200, but no data to serve), error (no answer).",
		}, []string{"result"}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_proxy_uploads_total",
			Help: "Uploads, by result: relayed (inspected and passed on) or rejected.",
		}, []string{"result"}),
		prefetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_proxy_prefetches_total",
			Help: "Prefetches finished, by result: committed or failed.",
		}, []string{"result"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "glimpse_proxy_prefetch_queue",
			Help: "Prefetches waiting for a worker.",
		}),
	}
	for _, r := range routes {
		m.requests.WithLabelValues(r, "get", "200")
	}
	for _, r := range []string{"allowed", "cached", "denied", "inactive", "error"} {
		m.auth.WithLabelValues(r)
	}
	for _, r := range []string{"relayed", "rejected"} {
		m.uploads.WithLabelValues(r)
	}
	for _, r := range []string{"committed", "failed"} {
		m.prefetches.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.auth, m.uploads, m.prefetches, m.queued)
	}
	return m
}

// instrument counts a route's requests. promhttp's wrapper keeps the ResponseWriter's
// io.ReaderFrom, so cached downloads still go out with sendfile(2).
func (m *metrics) instrument(route string, h http.Handler) http.Handler {
	return promhttp.InstrumentHandlerCounter(m.requests.MustCurryWith(prometheus.Labels{"route": route}), h)
}
