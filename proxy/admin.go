package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"glimpse/api"
	"glimpse/cache"
)

// AdminHandler serves Glance's cache API for the admin listener, which has no
// authentication of its own: keep it on loopback.
//
//	GET    /v2/cache         {"cached_images": [...], "queued_images": [...]}
//	PUT    /v2/cache/{id}    queue a prefetch (202)
//	DELETE /v2/cache/{id}    evict the image, or take it off the queue (204)
//	DELETE /v2/cache         x-image-cache-clear-target: cache, queue, or both when absent (204)
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern, name string, h http.HandlerFunc) {
		mux.Handle(pattern, p.m.instrument(name, h))
	}
	route("GET /v2/cache", "admin", p.listCache)
	route("PUT /v2/cache/{id}", "admin", p.queueImage)
	route("DELETE /v2/cache/{id}", "admin", p.deleteImage)
	route("DELETE /v2/cache", "admin", p.clearCache)
	route("GET /healthcheck", "healthcheck", healthcheck)
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.gatherer, promhttp.HandlerOpts{}))
	return mux
}

// CachedImage is an entry of GET /v2/cache, as Glance lists it (times in Unix seconds).
type CachedImage struct {
	ImageID      string  `json:"image_id"`
	Hits         int64   `json:"hits"`
	LastAccessed float64 `json:"last_accessed"`
	LastModified float64 `json:"last_modified"`
	Size         int64   `json:"size"`
}

// CacheList is the body of GET /v2/cache.
type CacheList struct {
	CachedImages []CachedImage `json:"cached_images"`
	QueuedImages []string      `json:"queued_images"`
}

func (p *Proxy) listCache(w http.ResponseWriter, r *http.Request) {
	cached, _ := p.cache.List()
	out := CacheList{CachedImages: []CachedImage{}, QueuedImages: p.queue.list()}
	for _, e := range cached {
		out.CachedImages = append(out.CachedImages, CachedImage{
			ImageID:      e.ID,
			Hits:         e.Hits,
			LastAccessed: float64(e.LastAccess.UnixMicro()) / 1e6,
			LastModified: float64(e.CommittedAt.UnixMicro()) / 1e6,
			Size:         e.Size,
		})
	}
	b, _ := json.Marshal(out)
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (p *Proxy) queueImage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		api.WriteError(w, r, http.StatusNotFound, fmt.Sprintf("Image %s not found.", id))
		return
	}
	img, resp, err := p.getImage(r.Context(), id, p.service.Clone())
	if err != nil {
		api.WriteError(w, r, http.StatusBadGateway, "The upstream image service did not answer.")
		return
	}
	if resp != nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			api.WriteError(w, r, http.StatusNotFound, fmt.Sprintf("Image %s not found.", id))
		} else {
			api.WriteError(w, r, http.StatusBadGateway, fmt.Sprintf("The upstream answered %s for image %s with the service credentials.", resp.Status, id))
		}
		return
	}
	if img.Status != api.StatusActive {
		api.WriteError(w, r, http.StatusBadRequest, fmt.Sprintf("Image %s is %s, not active.", id, img.Status))
		return
	}
	p.queue.add(id)
	w.WriteHeader(http.StatusAccepted)
}

func (p *Proxy) deleteImage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	found := p.cache.Delete(id)
	if p.queue.remove(id) {
		found = true
	}
	if !found {
		api.WriteError(w, r, http.StatusNotFound, fmt.Sprintf("Image %s not found.", id))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (p *Proxy) clearCache(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Image-Cache-Clear-Target")
	switch target {
	case "", "cache", "queue":
	default:
		api.WriteError(w, r, http.StatusBadRequest, fmt.Sprintf("If provided 'x-image-cache-clear-target' must be 'cache', 'queue' or empty string, not %q.", target))
		return
	}
	if target != "queue" {
		p.cache.Clear()
	}
	if target != "cache" {
		p.queue.clear()
	}
	w.WriteHeader(http.StatusNoContent)
}

// prefetchQueue runs prefetches, at most maxFills at once, in the order they were asked.
type prefetchQueue struct {
	p      *Proxy
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	cond    *sync.Cond
	waiting []string
	running map[string]bool
	closed  bool
}

func newPrefetchQueue(p *Proxy) *prefetchQueue {
	q := &prefetchQueue{p: p, running: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	q.ctx, q.cancel = context.WithCancel(context.Background())
	for range p.maxFills {
		q.wg.Add(1)
		go q.worker()
	}
	return q
}

func (q *prefetchQueue) add(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.running[id] || slices.Contains(q.waiting, id) {
		return
	}
	q.waiting = append(q.waiting, id)
	q.p.m.queued.Set(float64(len(q.waiting)))
	q.cond.Signal()
}

func (q *prefetchQueue) remove(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.Index(q.waiting, id)
	if i < 0 {
		return q.running[id] // its fill is the cache's to discard
	}
	q.waiting = slices.Delete(q.waiting, i, i+1)
	q.p.m.queued.Set(float64(len(q.waiting)))
	return true
}

func (q *prefetchQueue) clear() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waiting = nil
	q.p.m.queued.Set(0)
}

// list is what is queued or being fetched, in order.
func (q *prefetchQueue) list() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := []string{}
	for id := range q.running {
		out = append(out, id)
	}
	slices.Sort(out)
	return append(out, q.waiting...)
}

func (q *prefetchQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
	q.cancel()
	q.wg.Wait()
}

func (q *prefetchQueue) worker() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		for len(q.waiting) == 0 && !q.closed {
			q.cond.Wait()
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		id := q.waiting[0]
		q.waiting = q.waiting[1:]
		q.running[id] = true
		q.p.m.queued.Set(float64(len(q.waiting)))
		q.mu.Unlock()

		err := q.p.prefetch(q.ctx, id)
		result := "committed"
		if err != nil {
			result = "failed"
			q.p.log.Warn("prefetch failed", "image", id, "err", err)
		} else {
			q.p.log.Info("prefetched", "image", id)
		}
		q.p.m.prefetches.WithLabelValues(result).Inc()
		q.mu.Lock()
		delete(q.running, id)
		q.mu.Unlock()
	}
}

// prefetch fills the cache with image id using the service credentials.
func (p *Proxy) prefetch(ctx context.Context, id string) error {
	img, resp, err := p.getImage(ctx, id, p.service.Clone())
	if err != nil {
		return err
	}
	if resp != nil {
		resp.Body.Close()
		return fmt.Errorf("the upstream answered %s", resp.Status)
	}
	if img.Status != api.StatusActive || img.Size == nil {
		return fmt.Errorf("image is %s", img.Status)
	}
	m := cache.Meta{ID: id, Size: *img.Size, Checksum: api.Str(img.Checksum), HashAlgo: api.Str(img.OSHashAlgo), HashValue: api.Str(img.OSHashValue)}
	return p.cache.Fill(ctx, m, p.fetcher(id, p.service.Clone()))
}
