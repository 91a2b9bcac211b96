package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrClosed is returned by reads after Close.
var ErrClosed = errors.New("cache: closed")

// Read writes the image's m.Size bytes to w: from a committed entry (a hit), by following a
// fill in progress (a coalesced wait), or by starting a fill and following it (a miss). An
// image the cache cannot keep (larger than the cache, no room, a failing disk, metadata
// that cannot verify it) is passed through from the upstream, verified on the way when the
// metadata allows.
//
// fetch is called with the fill's own context, which outlives the request that started
// the fill; it must use that context and not the request's.
//
// When Read returns an error, the bytes written so far are not the image: the caller must
// break the transfer (an HTTP handler panics with http.ErrAbortHandler). The last byte is
// written only once the bytes are verified, so that a wrong or short body never ends
// cleanly. Bytes go to w through io.Copy from an *os.File, so that an http.ResponseWriter
// sends them with sendfile(2).
func (c *Cache) Read(ctx context.Context, w io.Writer, m Meta, fetch Fetcher) (int64, error) {
	if err := m.Validate(); err != nil {
		c.m.misses.Inc()
		c.m.passthrough.WithLabelValues(passInvalid).Inc()
		return c.passthrough(ctx, w, m, fetch, false)
	}
	key := m.key()
	for {
		if file := c.openEntry(m); file != nil {
			c.m.hits.Inc()
			return c.serveFile(ctx, w, file, m, 0, m.Size, fetch)
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, ErrClosed
		}
		if f := c.fills[key]; f != nil && f.meta == m {
			c.mu.Unlock()
			c.m.coalesced.Inc()
			return f.follow(ctx, w, fetch)
		}
		if e, ok := c.lru.Peek(key); ok && e.meta == m {
			c.mu.Unlock() // committed between the two looks
			continue
		}
		f, why := c.startFillLocked(m, fetch)
		c.mu.Unlock()
		c.m.misses.Inc()
		if f == nil {
			c.m.passthrough.WithLabelValues(why).Inc()
			return c.passthrough(ctx, w, m, fetch, true)
		}
		return f.follow(ctx, w, fetch)
	}
}

// ReadRange writes n bytes of the image from offset off (a Range request; the caller has
// checked that the range lies within the image). A hit is served from the entry; on a miss
// the range comes from the upstream while a fill of the whole image starts in the
// background.
func (c *Cache) ReadRange(ctx context.Context, w io.Writer, m Meta, off, n int64, fetch Fetcher) (int64, error) {
	if off < 0 || n < 0 || off+n > m.Size {
		return 0, fmt.Errorf("cache: range %d+%d outside image %s of %d bytes", off, n, m.ID, m.Size)
	}
	valid := m.Validate() == nil
	if valid {
		if file := c.openEntry(m); file != nil {
			c.m.hits.Inc()
			return c.serveFile(ctx, w, file, m, off, n, fetch)
		}
	}
	c.m.misses.Inc()
	if valid {
		c.mu.Lock()
		_, have := c.lru.Peek(m.key())
		if c.fills[m.key()] == nil && !have && !c.closed {
			c.startFillLocked(m, fetch)
		}
		c.mu.Unlock()
	}
	return c.copyUpstream(ctx, w, fetch, off, n)
}

// Fill makes sure the image is cached (a prefetch): it starts a fill, or waits for the one
// in progress, and returns when the image is committed or the fill failed.
func (c *Cache) Fill(ctx context.Context, m Meta, fetch Fetcher) error {
	if err := m.Validate(); err != nil {
		return err
	}
	key := m.key()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if e, ok := c.lru.Peek(key); ok && e.meta == m {
		c.mu.Unlock()
		return nil
	}
	f := c.fills[key]
	if f == nil {
		var why string
		if f, why = c.startFillLocked(m, fetch); f == nil {
			c.mu.Unlock()
			return fmt.Errorf("image %s (%d bytes) cannot be cached: %s", m.ID, m.Size, why)
		}
	}
	c.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// serveFile copies n bytes from off of a committed entry. A read error of the disk sends
// the rest from the upstream.
func (c *Cache) serveFile(ctx context.Context, w io.Writer, file *os.File, m Meta, off, n int64, fetch Fetcher) (int64, error) {
	defer file.Close()
	if off > 0 {
		if _, err := file.Seek(off, io.SeekStart); err != nil {
			return 0, err
		}
	}
	done, err := io.CopyN(w, file, n)
	c.m.fromCache.Add(float64(done))
	if err != nil && diskFailed(file, off+done) {
		c.log.Warn("cache: entry unreadable, going on from the upstream", "image", m.ID, "offset", off+done, "err", err)
		c.mu.Lock()
		c.removeLocked(m.key())
		c.mu.Unlock()
		k, err := c.copyUpstream(ctx, w, fetch, off+done, n-done)
		return done + k, err
	}
	return done, err
}

// diskFailed tells a read error of the cache's file from a write error of the client after
// a copy stopped at off: the file must still give a byte there.
func diskFailed(file *os.File, off int64) bool {
	var b [1]byte
	_, err := file.ReadAt(b[:], off)
	return err != nil
}

// follow sends a fill's bytes as they land, holding back the last one until the fill is
// committed. When the cache disk fails, the rest comes from the upstream.
func (f *fill) follow(ctx context.Context, w io.Writer, fetch Fetcher) (int64, error) {
	c := f.c
	f.mu.Lock()
	if f.state == failed {
		err := f.err
		f.mu.Unlock()
		if errors.Is(err, errDisk) {
			return c.passthrough(ctx, w, f.meta, fetch, true)
		}
		return 0, err
	}
	file, err := os.Open(f.path)
	f.mu.Unlock()
	if err != nil {
		c.log.Warn("cache: cannot follow a fill, passing through", "image", f.meta.ID, "err", err)
		return c.passthrough(ctx, w, f.meta, fetch, true)
	}
	defer file.Close()
	size := f.meta.Size
	var off int64
	for {
		f.mu.Lock()
		written, state, ferr, changed := f.written, f.state, f.err, f.changed
		f.mu.Unlock()
		if state == failed {
			if errors.Is(ferr, errDisk) {
				k, err := c.copyUpstream(ctx, w, fetch, off, size-off)
				return off + k, err
			}
			return off, ferr
		}
		limit := written
		if state != committed && limit == size && size > 0 {
			limit = size - 1 // the last byte waits for the verdict
		}
		if off < limit {
			k, err := io.CopyN(w, file, limit-off)
			off += k
			c.m.fromCache.Add(float64(k))
			if err != nil {
				if diskFailed(file, off) {
					c.log.Warn("cache: fill unreadable, going on from the upstream", "image", f.meta.ID, "offset", off, "err", err)
					k, err := c.copyUpstream(ctx, w, fetch, off, size-off)
					return off + k, err
				}
				return off, err
			}
			continue
		}
		if state == committed {
			return off, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return off, ctx.Err()
		}
	}
}

// copyUpstream sends n bytes from off straight from the upstream.
func (c *Cache) copyUpstream(ctx context.Context, w io.Writer, fetch Fetcher, off, n int64) (int64, error) {
	if n == 0 {
		return 0, nil
	}
	body, err := fetch(ctx, off, n)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	k, err := io.CopyN(w, countingReader{body, &c.upstreamRead}, n)
	c.m.fromUpstream.Add(float64(k))
	if err == io.EOF {
		err = fmt.Errorf("the upstream ended after %d of %d bytes: %w", k, n, io.ErrUnexpectedEOF)
	}
	return k, err
}

// passthrough sends the whole image from the upstream without keeping it. With verify, the
// bytes are checked against the metadata as they go and the last byte is sent only when
// they match; without, only the size is checked.
func (c *Cache) passthrough(ctx context.Context, w io.Writer, m Meta, fetch Fetcher, verify bool) (int64, error) {
	if !verify {
		return c.copyUpstream(ctx, w, fetch, 0, m.Size)
	}
	body, err := fetch(ctx, 0, -1)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	v := newVerifier(m, passBuffers, passBufferSize)
	defer v.stop()
	r := countingReader{body, &c.upstreamRead}
	var off int64
	var last byte
	for {
		buf := v.get()
		k, rerr := io.ReadFull(r, buf)
		if off+int64(k) > m.Size {
			v.put(buf)
			return off, fmt.Errorf("image %s: the upstream sent more than its size, %d bytes", m.ID, m.Size)
		}
		if k > 0 {
			send := k
			if off+int64(k) == m.Size {
				send--
				last = buf[send]
			}
			if _, err := w.Write(buf[:send]); err != nil {
				v.put(buf)
				return off, err
			}
			c.m.fromUpstream.Add(float64(send))
			v.feed(buf[:k])
			off += int64(k)
		} else {
			v.put(buf)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return off, rerr
		}
	}
	if off != m.Size {
		return off, fmt.Errorf("image %s: the upstream sent %d bytes, its size is %d: %w", m.ID, off, m.Size, io.ErrUnexpectedEOF)
	}
	if _, err := v.check(); err != nil {
		return off - 1, err
	}
	if m.Size > 0 {
		if _, err := w.Write([]byte{last}); err != nil {
			return off - 1, err
		}
		c.m.fromUpstream.Add(1)
	}
	return off, nil
}
