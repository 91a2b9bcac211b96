package proxy

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"glimpse/api"
	"glimpse/cache"
	"glimpse/inspect"
)

// Proxy is the Image API v2 in front of an upstream, with downloads from a cache.
type Proxy struct {
	upstream  *url.URL
	cache     *cache.Cache
	transport http.RoundTripper
	client    *http.Client
	log       *slog.Logger
	reg       prometheus.Registerer
	gatherer  prometheus.Gatherer
	m         *metrics
	rp        *httputil.ReverseProxy

	authTTL   time.Duration
	decisions *decisionCache

	policy       inspect.Policy
	maxImageSize int64

	maxFills int
	service  http.Header
	queue    *prefetchQueue
}

// Option configures a Proxy.
type Option func(*Proxy) error

// WithTransport sets the transport to the upstream; the default is a clone of
// http.DefaultTransport without compression and with a larger idle pool.
func WithTransport(t http.RoundTripper) Option {
	return func(p *Proxy) error { p.transport = t; return nil }
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option {
	return func(p *Proxy) error { p.log = l; return nil }
}

// WithRegistry registers the proxy's metrics (glimpse_proxy_*) on reg and serves reg's
// metrics at /metrics; by default the metrics are kept but not registered, and /metrics is
// empty.
func WithRegistry(reg *prometheus.Registry) Option {
	return func(p *Proxy) error { p.reg, p.gatherer = reg, reg; return nil }
}

// WithAuthTTL sets how long the upstream's yes to a caller for an image is trusted; the
// default is 10 s. Zero asks the upstream every time.
func WithAuthTTL(d time.Duration) Option {
	return func(p *Proxy) error {
		if d < 0 {
			return fmt.Errorf("proxy: auth TTL %v", d)
		}
		p.authTTL = d
		return nil
	}
}

// WithPolicy sets what uploads must pass beyond the safety rules (formats, sizes); the
// default accepts every safe image.
func WithPolicy(pol inspect.Policy) Option {
	return func(p *Proxy) error { p.policy = pol; return nil }
}

// WithMaxImageSize refuses uploads of more than n bytes (0, the default, has no limit).
// The policy's MaxVirtualSize bounds the virtual size.
func WithMaxImageSize(n int64) Option {
	return func(p *Proxy) error { p.maxImageSize = n; return nil }
}

// WithMaxFills bounds the prefetches that run at once; the default is 4.
func WithMaxFills(n int) Option {
	return func(p *Proxy) error {
		if n < 1 {
			return fmt.Errorf("proxy: max fills %d must be at least 1", n)
		}
		p.maxFills = n
		return nil
	}
}

// WithServiceCredentials sets the headers prefetches send to the upstream: X-Auth-Token
// when token is not empty, and the given headers (identity headers for an upstream that
// trusts them).
func WithServiceCredentials(token string, h http.Header) Option {
	return func(p *Proxy) error {
		p.service = h.Clone()
		if p.service == nil {
			p.service = http.Header{}
		}
		if token != "" {
			p.service.Set("X-Auth-Token", token)
		}
		return nil
	}
}

// New returns a proxy to upstream (the URL Glance's API is at, without /v2) that serves
// downloads from c. Close stops its prefetch workers.
func New(upstream *url.URL, c *cache.Cache, opts ...Option) (*Proxy, error) {
	if upstream == nil || (upstream.Scheme != "http" && upstream.Scheme != "https") || upstream.Host == "" {
		return nil, fmt.Errorf("proxy: upstream %v is not an http(s) URL", upstream)
	}
	if c == nil {
		return nil, errors.New("proxy: no cache")
	}
	p := &Proxy{
		upstream: upstream,
		cache:    c,
		log:      slog.New(slog.DiscardHandler),
		authTTL:  10 * time.Second,
		maxFills: 4,
		service:  http.Header{},
	}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	if p.transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DisableCompression = true
		t.MaxIdleConnsPerHost = 64
		t.ForceAttemptHTTP2 = false
		t.ReadBufferSize = 64 << 10
		t.WriteBufferSize = 64 << 10
		p.transport = t
	}
	p.client = &http.Client{Transport: p.transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if p.gatherer == nil {
		p.gatherer = prometheus.NewRegistry()
	}
	p.m = newMetrics(p.reg)
	p.decisions = newDecisionCache(decisionCacheSize)
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(p.upstream)
			pr.SetXForwarded()
		},
		Transport:    p.transport,
		ErrorLog:     slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		ErrorHandler: p.proxyError,
	}
	p.queue = newPrefetchQueue(p)
	return p, nil
}

// Close stops the prefetch workers (fills in progress are the cache's to discard).
func (p *Proxy) Close() { p.queue.close() }

// Handler serves the Image API.
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern, name string, h http.HandlerFunc) {
		mux.Handle(pattern, p.m.instrument(name, h))
	}
	route("GET /v2/images/{id}/file", "download", p.download)
	route("HEAD /v2/images/{id}/file", "forward", p.rp.ServeHTTP)
	route("PUT /v2/images/{id}/file", "upload", p.upload)
	route("PUT /v2/images/{id}/stage", "upload", p.upload)
	route("GET /healthcheck", "healthcheck", healthcheck)
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.gatherer, promhttp.HandlerOpts{}))
	route("/", "forward", p.rp.ServeHTTP)
	return mux
}

func healthcheck(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	io.WriteString(w, "OK")
}

// proxyError answers a request the upstream could not: Glance's 502, or the upload's 400
// when the relay refused the image.
func (p *Proxy) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	if u, ok := r.Context().Value(uploadKey{}).(*uploadRelay); ok {
		if findings := u.refused(); findings != nil {
			p.refuse(w, r, findings)
			return
		}
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		p.log.Debug("client went away", "method", r.Method, "path", r.URL.Path)
		w.WriteHeader(499)
		return
	}
	p.log.Warn("upstream unreachable", "method", r.Method, "path", r.URL.Path, "err", err)
	api.WriteError(w, r, http.StatusBadGateway, "The upstream image service did not answer.")
}

// forwardHeaders are the caller's headers for a request the proxy makes on its behalf:
// everything but hop-by-hop and body headers.
func forwardHeaders(in http.Header) http.Header {
	h := in.Clone()
	for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te", "Trailer",
		"Transfer-Encoding", "Upgrade", "Content-Length", "Content-Type", "Content-Range", "Content-Md5", "Expect",
		"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Accept-Encoding"} {
		h.Del(k)
	}
	return h
}

// imagePath is the upstream URL of /v2/images/{id}[/suffix].
func (p *Proxy) imageURL(id string, suffix ...string) string {
	elem := append([]string{"v2", "images", url.PathEscape(id)}, suffix...)
	return p.upstream.JoinPath(elem...).String()
}

// validID accepts ids that can be put in an upstream path as one segment.
func validID(id string) bool {
	return id != "" && id != "." && id != ".." && len(id) <= 255 && !strings.ContainsAny(id, "/\\\x00")
}

// maxJSONBody caps the image JSON read from the upstream.
const maxJSONBody = 1 << 20

// getImage asks the upstream for GET /v2/images/{id} with the given headers. It returns the
// image on a 200; otherwise the response (body unread) for the caller to pass back or close.
func (p *Proxy) getImage(ctx context.Context, id string, h http.Header) (*api.Image, *http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.imageURL(id), nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header = h
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, resp, nil
	}
	defer resp.Body.Close()
	var img api.Image
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONBody)).Decode(&img); err != nil {
		return nil, nil, fmt.Errorf("image %s from the upstream: %w", id, err)
	}
	return &img, nil, nil
}

// passBack copies an upstream response to the caller.
func passBack(w http.ResponseWriter, resp *http.Response) {
	defer resp.Body.Close()
	for k, v := range resp.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Keep-Alive", "Transfer-Encoding", "Trailer", "Upgrade":
			continue
		}
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// requestID makes an X-Openstack-Request-Id as Glance does ("req-" and a UUID).
func requestID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("req-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// isClientGone reports errors that mean the caller hung up.
func isClientGone(err error) bool {
	var ne *net.OpError
	return errors.Is(err, context.Canceled) || errors.As(err, &ne)
}

// decisionCache keeps the upstream's yes per caller credentials and image, least recently
// used dropped first.
type decisionCache struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, decision]
}

type decision struct {
	meta    cache.Meta
	expires time.Time
}

const decisionCacheSize = 10000

func newDecisionCache(max int) *decisionCache {
	l, _ := simplelru.NewLRU[string, decision](max, nil)
	return &decisionCache{lru: l}
}

func (d *decisionCache) get(key string, now time.Time) (cache.Meta, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.lru.Get(key)
	if !ok || now.After(v.expires) {
		return cache.Meta{}, false
	}
	return v.meta, true
}

func (d *decisionCache) put(key string, m cache.Meta, expires time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lru.Add(key, decision{m, expires})
}
