package cache

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"glimpse/internal/writeback"
)

// tempFile is what a fill writes to: an *os.File, or a failing one in tests.
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

type fillState int

const (
	filling fillState = iota
	committed
	failed
)

// fill downloads one image into a temporary file, verifies it and commits it; readers
// follow it through their own descriptors on the same file.
type fill struct {
	c         *Cache
	meta      Meta
	key       string
	fetch     Fetcher
	tmp       tempFile
	tmpPath   string
	ctx       context.Context
	cancel    context.CancelFunc
	forgotten atomic.Bool // deleted while filling: never committed
	released  bool        // reservation given back (under c.mu)

	mu      sync.Mutex
	path    string // the data's current name: tmpPath, then the entry's
	written int64
	state   fillState
	err     error
	changed chan struct{} // closed and replaced whenever written or state changes
	done    chan struct{} // closed when the fill ends
}

// Buffers of a fill: the download reads into one while the hashers work on others.
const (
	fillBuffers      = 8
	fillBufferSize   = 512 << 10
	passBuffers      = 4
	passBufferSize   = 256 << 10
	maxErrorBodySize = 64 << 10
)

// startFillLocked starts a fill of m, or says why there is none: the image is larger than
// the cache, other fills hold the room, or the disk refuses a temporary file.
func (c *Cache) startFillLocked(m Meta, fetch Fetcher) (*fill, string) {
	if m.Size > c.max {
		return nil, passTooLarge
	}
	if !c.evictLocked(m.Size) {
		return nil, passNoRoom
	}
	tmp, err := c.createTemp()
	if err != nil {
		c.log.Warn("cache: no temporary file, passing through", "image", m.ID, "err", err)
		return nil, passDisk
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.fillTimeout)
	f := &fill{
		c: c, meta: m, key: m.key(), fetch: fetch,
		tmp: tmp, tmpPath: tmp.Name(), path: tmp.Name(),
		ctx: ctx, cancel: cancel,
		changed: make(chan struct{}), done: make(chan struct{}),
	}
	c.reserved += m.Size
	c.fills[f.key] = f
	c.wg.Add(1)
	go f.run()
	c.log.Debug("cache: fill started", "image", m.ID, "size", m.Size)
	return f, ""
}

func (f *fill) run() {
	defer f.c.wg.Done()
	defer f.cancel()
	start := time.Now()
	reason, err := f.download()
	if err == nil {
		reason, err = f.commit()
	}
	if err != nil {
		switch {
		case f.forgotten.Load():
			reason = ReasonDeleted
		case f.ctx.Err() != nil && reason == ReasonUpstream:
			reason = ReasonCancelled
		}
		f.discard(reason, err)
		return
	}
	f.c.log.Info("cache: fill committed", "image", f.meta.ID, "size", f.meta.Size, "seconds", time.Since(start).Seconds())
}

// download copies the upstream's body into the temporary file and verifies it.
func (f *fill) download() (string, error) {
	body, err := f.fetch(f.ctx, 0, -1)
	if err != nil {
		return ReasonUpstream, err
	}
	defer body.Close()
	v := newVerifier(f.meta, fillBuffers, fillBufferSize)
	defer v.stop()
	r := countingReader{body, &f.c.upstreamRead}
	size := f.meta.Size
	var n int64
	pacer := writeback.NewPacer(f.tmp)
	for {
		buf := v.get()
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			if n+int64(k) > size {
				v.put(buf)
				return ReasonSize, fmt.Errorf("image %s: the upstream sent more than its size, %d bytes", f.meta.ID, size)
			}
			if _, werr := writeback.Write(f.tmp, buf[:k]); werr != nil {
				v.put(buf)
				return ReasonDisk, &diskError{werr}
			}
			v.feed(buf[:k])
			n += int64(k)
			f.advance(n)
			pacer.Written(n) // so that the commit's fsync, which readers wait for, is short
		} else {
			v.put(buf)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return ReasonUpstream, fmt.Errorf("image %s: reading from the upstream after %d bytes: %w", f.meta.ID, n, rerr)
		}
	}
	if n != size {
		return ReasonSize, fmt.Errorf("image %s: the upstream sent %d bytes, its size is %d", f.meta.ID, n, size)
	}
	return v.check()
}

// commit makes the verified temporary file an entry: fsync, sidecar, rename, index.
func (f *fill) commit() (string, error) {
	c := f.c
	syncStart := time.Now()
	if err := f.tmp.Sync(); err != nil {
		return ReasonDisk, &diskError{err}
	}
	f.c.log.Debug("cache: fill synced", "image", f.meta.ID, "seconds", time.Since(syncStart).Seconds())
	if err := f.tmp.Close(); err != nil {
		return ReasonDisk, &diskError{err}
	}
	now := time.Now()
	s := sidecar{Meta: f.meta, Key: f.key, CommittedAt: now, LastAccess: now}
	metaTmp, err := c.writeTemp(s, true)
	if err != nil {
		return ReasonDisk, &diskError{err}
	}
	c.mu.Lock()
	if f.forgotten.Load() || c.closed {
		c.mu.Unlock()
		os.Remove(metaTmp)
		return ReasonCancelled, errors.New("fill abandoned before its commit")
	}
	// Data first: a sidecar only ever names data that is complete and verified.
	f.mu.Lock()
	err = os.Rename(f.tmpPath, c.dataPath(f.key))
	if err == nil {
		f.path = c.dataPath(f.key)
	}
	f.mu.Unlock()
	if err == nil {
		if err = os.Rename(metaTmp, c.metaPath(f.key)); err != nil {
			os.Remove(c.dataPath(f.key))
		}
	}
	if err == nil {
		if err = syncDir(c.dir); err != nil {
			c.removeFiles(f.key)
		}
	}
	if err != nil {
		c.mu.Unlock()
		os.Remove(metaTmp)
		return ReasonDisk, &diskError{err}
	}
	f.releaseLocked()
	e := &entry{meta: f.meta, key: f.key, committedAt: now, lastAccess: now, savedAccess: now}
	c.lru.Add(f.key, e)
	c.bytes += f.meta.Size
	c.mu.Unlock()
	c.m.committed.Inc()
	f.finish(committed, nil)
	return "", nil
}

// releaseLocked gives the fill's reservation back and removes it from the fills in
// progress (once).
func (f *fill) releaseLocked() {
	if f.released {
		return
	}
	f.released = true
	f.c.reserved -= f.meta.Size
	if f.c.fills[f.key] == f {
		delete(f.c.fills, f.key)
	}
}

func (f *fill) discard(reason string, err error) {
	c := f.c
	f.tmp.Close()
	if rerr := os.Remove(f.tmpPath); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		c.log.Warn("cache: removing a discarded fill", "file", f.tmpPath, "err", rerr)
	}
	c.mu.Lock()
	f.releaseLocked()
	c.mu.Unlock()
	c.m.discarded.WithLabelValues(reason).Inc()
	c.log.Warn("cache: fill discarded", "image", f.meta.ID, "reason", reason, "err", err)
	f.finish(failed, err)
}

func (f *fill) advance(n int64) {
	f.mu.Lock()
	f.written = n
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *fill) finish(st fillState, err error) {
	f.mu.Lock()
	f.state, f.err = st, err
	close(f.changed)
	f.changed = make(chan struct{})
	close(f.done)
	f.mu.Unlock()
}

// verifier hashes a stream with MD5 and the os_hash algorithm at once, each in its own
// goroutine, so that verification runs at the speed of the slower hash and not of the two
// in a row. Buffers go round: get, fill, feed (the hashers give it back), or put.
type verifier struct {
	meta   Meta
	hashes []hash.Hash
	in     []chan *chunk
	free   chan []byte
	wg     sync.WaitGroup
	closed bool
}

type chunk struct {
	b    []byte
	refs atomic.Int32
}

func newVerifier(m Meta, nbuf, size int) *verifier {
	v := &verifier{meta: m, free: make(chan []byte, nbuf)}
	for range nbuf {
		v.free <- make([]byte, size)
	}
	v.hashes = []hash.Hash{md5.New(), newHash(m.HashAlgo)}
	for _, h := range v.hashes {
		ch := make(chan *chunk, nbuf)
		v.in = append(v.in, ch)
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			for c := range ch {
				h.Write(c.b)
				if c.refs.Add(-1) == 0 {
					v.free <- c.b[:cap(c.b)]
				}
			}
		}()
	}
	return v
}

func (v *verifier) get() []byte  { return <-v.free }
func (v *verifier) put(b []byte) { v.free <- b[:cap(b)] }

func (v *verifier) feed(b []byte) {
	c := &chunk{b: b}
	c.refs.Store(int32(len(v.in)))
	for _, ch := range v.in {
		ch <- c
	}
}

func (v *verifier) stop() {
	if v.closed {
		return
	}
	v.closed = true
	for _, ch := range v.in {
		close(ch)
	}
	v.wg.Wait()
}

// check waits for the hashers and compares their sums with the metadata.
func (v *verifier) check() (string, error) {
	v.stop()
	if got := v.hashes[0].Sum(nil); !hexEqual(got, v.meta.Checksum) {
		return ReasonChecksum, fmt.Errorf("image %s: MD5 %x, the checksum is %s", v.meta.ID, got, v.meta.Checksum)
	}
	if got := v.hashes[1].Sum(nil); !hexEqual(got, v.meta.HashValue) {
		return ReasonHash, fmt.Errorf("image %s: %s %x, the os_hash_value is %s", v.meta.ID, v.meta.HashAlgo, got, v.meta.HashValue)
	}
	return "", nil
}

func hexEqual(sum []byte, want string) bool {
	w, err := hex.DecodeString(strings.ToLower(want))
	return err == nil && bytes.Equal(sum, w)
}
