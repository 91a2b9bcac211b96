package store

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus series, registered on the registry given to New.
type metrics struct {
	requests      *prometheus.CounterVec   // by route, method, code
	duration      *prometheus.HistogramVec // by route
	uploadBytes   prometheus.Counter
	downloadBytes prometheus.Counter
	uploads       *prometheus.CounterVec // by result: active, refused, failed
	refusals      *prometheus.CounterVec // by finding code
}

// Results of an upload, the label values of glimpse_store_uploads_total.
const (
	uploadActive  = "active"
	uploadRefused = "refused"
	uploadFailed  = "failed"
)

func newMetrics(reg prometheus.Registerer, images func() map[string]float64) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_store_requests_total", Help: "Image API requests answered, by route, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "glimpse_store_request_duration_seconds", Help: "Time to answer an Image API request, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
		uploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_store_upload_bytes_total", Help: "Image data bytes received by uploads (kept or not).",
		}),
		downloadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_store_download_bytes_total", Help: "Image data bytes sent by downloads.",
		}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_store_uploads_total", Help: "Uploads by result: active (kept), refused (by inspection or policy), failed (I/O, client gone).",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_store_upload_findings_total", Help: "Findings that refused uploads, by finding code.",
		}, []string{"finding"}),
	}
	for _, r := range []string{uploadActive, uploadRefused, uploadFailed} {
		m.uploads.WithLabelValues(r)
	}
	gauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "glimpse_store_images", Help: "Images in the store (all statuses).",
	}, func() float64 {
		var n float64
		for _, v := range images() {
			n += v
		}
		return n
	})
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.uploadBytes, m.downloadBytes, m.uploads, m.refusals, gauge} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// initRoute makes a route's series exist at zero before its first request.
func (m *metrics) initRoute(route string) {
	m.duration.WithLabelValues(route)
}

func (m *metrics) observe(route, method string, code int, d time.Duration, _ int64) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}
