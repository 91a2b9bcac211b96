package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
)

// Cache is an image data cache on a local disk. Its methods are safe for concurrent use.
type Cache struct {
	dir         string
	max         int64
	log         *slog.Logger
	m           *metrics
	fillTimeout time.Duration
	createTemp  func() (tempFile, error) // a fill's temporary file (tests inject disk failures)

	ctx    context.Context // fills run on it; Close cancels it
	cancel context.CancelFunc
	wg     sync.WaitGroup // fills
	lock   *os.File

	upstreamRead atomic.Int64

	mu       sync.Mutex
	lru      *simplelru.LRU[string, *entry] // committed entries by key
	bytes    int64                          // bytes of committed entries
	reserved int64                          // bytes held for fills in progress
	fills    map[string]*fill               // fills in progress by key
	closed   bool
}

type entry struct {
	meta        Meta
	key         string
	committedAt time.Time
	lastAccess  time.Time
	savedAccess time.Time // last access written to the sidecar
	hits        int64
}

// Option configures a Cache.
type Option func(*Cache) error

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option {
	return func(c *Cache) error { c.log = l; return nil }
}

// WithRegisterer registers the cache's metrics (glimpse_cache_*) on reg; by default they are
// kept but not registered anywhere.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(c *Cache) error { c.m = newMetrics(reg, c); return nil }
}

// WithFillTimeout bounds the time one fill may take; the default is one hour.
func WithFillTimeout(d time.Duration) Option {
	return func(c *Cache) error {
		if d <= 0 {
			return fmt.Errorf("cache: fill timeout %v", d)
		}
		c.fillTimeout = d
		return nil
	}
}

// accessSaveInterval is how stale the last access in a sidecar may be: a hit rewrites the
// sidecar at most this often (Close writes the rest).
const accessSaveInterval = time.Minute

// Open opens (creating it if needed) the cache in dir, bounded to maxBytes, and rebuilds
// its index from what is there. Only one process may have a directory open at a time.
func Open(dir string, maxBytes int64, opts ...Option) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("cache: size %d must be above zero", maxBytes)
	}
	c := &Cache{
		dir:         dir,
		max:         maxBytes,
		log:         slog.New(slog.DiscardHandler),
		fillTimeout: time.Hour,
		fills:       map[string]*fill{},
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	c.createTemp = func() (tempFile, error) { return os.CreateTemp(dir, tmpPrefix+"data-*") }
	if c.m == nil {
		c.m = newMetrics(nil, c)
	}
	c.lru, _ = simplelru.NewLRU[string, *entry](math.MaxInt, nil)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	c.lock = lock
	entries, err := c.recover()
	if err != nil {
		lock.Close()
		return nil, err
	}
	// Oldest first, so that the most recently used ends up at the front of the LRU.
	slices.SortFunc(entries, func(a, b *entry) int { return a.lastAccess.Compare(b.lastAccess) })
	for _, e := range entries {
		c.lru.Add(e.key, e)
		c.bytes += e.meta.Size
	}
	c.mu.Lock()
	c.evictLocked(0) // the bound may have shrunk since the last run
	c.mu.Unlock()
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.log.Info("cache opened", "dir", dir, "entries", c.lru.Len(), "bytes", c.bytes, "max", maxBytes)
	return c, nil
}

// Close discards the fills in progress (their readers see a broken transfer), writes the
// last access times and releases the directory.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	var dirty []*entry
	for _, e := range c.lru.Values() {
		if e.lastAccess.After(e.savedAccess) {
			dirty = append(dirty, e)
		}
	}
	snap := make([]sidecar, len(dirty))
	for i, e := range dirty {
		snap[i] = e.sidecar()
	}
	c.mu.Unlock()
	for _, s := range snap {
		if err := c.writeSidecar(s, false); err != nil {
			c.log.Warn("cache: saving last access", "image", s.ID, "err", err)
		}
	}
	return c.lock.Close()
}

// Max is the cache's byte bound.
func (c *Cache) Max() int64 { return c.max }

func (c *Cache) usage() (int64, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes, c.lru.Len()
}

// evictLocked removes least recently used entries until need more bytes fit. It reports
// whether they do.
func (c *Cache) evictLocked(need int64) bool {
	for c.bytes+c.reserved+need > c.max {
		key, e, ok := c.lru.RemoveOldest()
		if !ok {
			return false
		}
		c.bytes -= e.meta.Size
		c.m.evictions.Inc()
		c.removeFiles(key)
		c.log.Info("cache: evicted", "image", e.meta.ID, "size", e.meta.Size)
	}
	return true
}

// removeLocked drops a committed entry from the index and the disk.
func (c *Cache) removeLocked(key string) {
	if e, ok := c.lru.Peek(key); ok {
		c.lru.Remove(key)
		c.bytes -= e.meta.Size
		c.removeFiles(key)
	}
}

// Info describes a committed entry.
type Info struct {
	Meta
	Hits        int64
	LastAccess  time.Time
	CommittedAt time.Time
}

// List returns the committed entries, most recently used first, and the images being
// filled.
func (c *Cache) List() (cached []Info, filling []Meta) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.lru.Values() {
		cached = append(cached, Info{Meta: e.meta, Hits: e.hits, LastAccess: e.lastAccess, CommittedAt: e.committedAt})
	}
	slices.Reverse(cached)
	for _, f := range c.fills {
		filling = append(filling, f.meta)
	}
	slices.SortFunc(filling, func(a, b Meta) int { return cmp.Compare(a.ID, b.ID) })
	return cached, filling
}

// Contains reports whether the image with this id has a committed entry.
func (c *Cache) Contains(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.lru.Values() {
		if e.meta.ID == id {
			return true
		}
	}
	return false
}

// Delete removes the image's entries and discards its fills in progress. It reports
// whether there was anything.
func (c *Cache) Delete(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	found := false
	for _, e := range c.lru.Values() {
		if e.meta.ID == id {
			c.removeLocked(e.key)
			found = true
		}
	}
	for key, f := range c.fills {
		if f.meta.ID == id {
			c.forgetLocked(key, f)
			found = true
		}
	}
	return found
}

// Clear removes every committed entry; fills in progress go on.
func (c *Cache) Clear() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, key := range c.lru.Keys() {
		c.removeLocked(key)
		n++
	}
	return n
}

// forgetLocked detaches a fill from the cache: it will not be committed, and the next
// request starts a new one.
func (c *Cache) forgetLocked(key string, f *fill) {
	delete(c.fills, key)
	f.forgotten.Store(true)
	f.cancel()
}

// open returns the committed entry's data, counting a hit; nil when there is none.
func (c *Cache) openEntry(m Meta) *os.File {
	key := m.key()
	c.mu.Lock()
	e, ok := c.lru.Get(key)
	if !ok || e.meta != m {
		c.mu.Unlock()
		return nil
	}
	f, err := os.Open(c.dataPath(key))
	if err != nil {
		c.log.Warn("cache: entry unreadable, dropped", "image", m.ID, "err", err)
		c.removeLocked(key)
		c.mu.Unlock()
		return nil
	}
	now := time.Now()
	e.lastAccess = now
	e.hits++
	var save *sidecar
	if now.Sub(e.savedAccess) >= accessSaveInterval {
		e.savedAccess = now
		s := e.sidecar()
		save = &s
	}
	c.mu.Unlock()
	if save != nil {
		if err := c.writeSidecar(*save, false); err != nil {
			c.log.Warn("cache: saving last access", "image", m.ID, "err", err)
		}
	}
	return f
}

// errDisk marks a failure of the cache disk: readers then go on from the upstream.
var errDisk = errors.New("cache disk failed")

type diskError struct{ err error }

func (e *diskError) Error() string        { return "cache disk: " + e.err.Error() }
func (e *diskError) Unwrap() error        { return e.err }
func (e *diskError) Is(target error) bool { return target == errDisk }

// countingReader counts bytes read from the upstream.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n.Add(int64(n))
	return n, err
}
