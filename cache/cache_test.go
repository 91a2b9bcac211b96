package cache

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// upstream is an in-process fake image service: GET /img/{id} serves an image, with Range.
type upstream struct {
	srv    *httptest.Server
	mu     sync.Mutex
	images map[string][]byte
	gets   atomic.Int32 // whole-image downloads
	ranges atomic.Int32 // range downloads
	// hold, when set, makes whole downloads send their first half, then wait for it to close.
	hold chan struct{}
	// truncate makes whole downloads announce the full length, send half and hang up.
	truncate atomic.Bool
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{images: map[string][]byte{}}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(r.URL.Path, "/img/")
	u.mu.Lock()
	data, ok := u.images[id]
	hold := u.hold
	u.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if rg := r.Header.Get("Range"); rg != "" {
		u.ranges.Add(1)
		var a, b int64
		if _, err := fmt.Sscanf(rg, "bytes=%d-%d", &a, &b); err != nil {
			http.Error(w, "bad range", 400)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(b-a+1, 10))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(data)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[a : b+1])
		return
	}
	u.gets.Add(1)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	half := len(data) / 2
	if hold != nil || u.truncate.Load() {
		w.Write(data[:half])
		w.(http.Flusher).Flush()
		if u.truncate.Load() {
			panic(http.ErrAbortHandler)
		}
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
		w.Write(data[half:])
		return
	}
	w.Write(data)
}

func (u *upstream) put(id string, data []byte) Meta {
	u.mu.Lock()
	u.images[id] = data
	u.mu.Unlock()
	return metaOf(id, data)
}

func metaOf(id string, data []byte) Meta {
	m5 := md5.Sum(data)
	s5 := sha512.Sum512(data)
	return Meta{ID: id, Size: int64(len(data)), Checksum: hex.EncodeToString(m5[:]), HashAlgo: "sha512", HashValue: hex.EncodeToString(s5[:])}
}

func (u *upstream) fetch(id string) Fetcher {
	return func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", u.srv.URL+"/img/"+id, nil)
		if off > 0 || n >= 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode/100 != 2 {
			resp.Body.Close()
			return nil, fmt.Errorf("upstream: %s", resp.Status)
		}
		return resp.Body, nil
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func openCache(t *testing.T, dir string, max int64) (*Cache, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := Open(dir, max, WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, reg
}

func read(c *Cache, m Meta, f Fetcher) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(int(max(m.Size, 0)) + 1)
	_, err := c.Read(context.Background(), &b, m, f)
	return b.Bytes(), err
}

// waitFor polls cond until it holds; the test's own deadline bounds it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 0 && i%1000 == 0 {
			t.Logf("still waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

func TestConcurrentColdReadsOneDownload(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(3<<20+17, 1)
	m := u.put("img1", data)
	hold := make(chan struct{})
	u.hold = hold
	c, reg := openCache(t, t.TempDir(), 64<<20)
	const readers = 32
	var wg sync.WaitGroup
	errs := make([]error, readers)
	got := make([][]byte, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = read(c, m, u.fetch("img1"))
		}()
	}
	// Release the upstream only once every reader has joined the one fill.
	waitFor(t, "32 readers on one fill", func() bool {
		return counter(t, reg, "glimpse_cache_requests_total", "result", "miss")+counter(t, reg, "glimpse_cache_requests_total", "result", "coalesced") == readers
	})
	close(hold)
	wg.Wait()
	for i := range readers {
		if errs[i] != nil || !bytes.Equal(got[i], data) {
			t.Fatalf("reader %d: %v, %d bytes", i, errs[i], len(got[i]))
		}
	}
	if n := u.gets.Load(); n != 1 {
		t.Fatalf("%d upstream downloads for %d concurrent readers, want 1", n, readers)
	}
	if miss, co := counter(t, reg, "glimpse_cache_requests_total", "result", "miss"), counter(t, reg, "glimpse_cache_requests_total", "result", "coalesced"); miss != 1 || co != readers-1 {
		t.Fatalf("misses %v, coalesced %v", miss, co)
	}
	// Now it is a hit.
	if b, err := read(c, m, u.fetch("img1")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("hit: %v", err)
	}
	if u.gets.Load() != 1 || counter(t, reg, "glimpse_cache_requests_total", "result", "hit") != 1 {
		t.Fatal("the second read was not a hit")
	}
	if counter(t, reg, "glimpse_cache_fills_committed_total") != 1 || counter(t, reg, "glimpse_cache_entries") != 1 ||
		counter(t, reg, "glimpse_cache_size_bytes") != float64(len(data)) {
		t.Fatal("metrics do not show one committed entry")
	}
}

func TestFollowersGetBytesBeforeTheEnd(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(2<<20, 2)
	m := u.put("img", data)
	hold := make(chan struct{})
	u.hold = hold
	c, _ := openCache(t, t.TempDir(), 64<<20)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(context.Background(), pw, m, u.fetch("img"))
		pw.CloseWithError(err)
		done <- err
	}()
	// The upstream sent half and waits: the reader must see that half now.
	first := make([]byte, len(data)/2)
	if _, err := io.ReadFull(pr, first); err != nil || !bytes.Equal(first, data[:len(data)/2]) {
		t.Fatalf("first half while the upstream waits: %v", err)
	}
	close(hold)
	rest, err := io.ReadAll(pr)
	if err != nil || !bytes.Equal(rest, data[len(data)/2:]) {
		t.Fatalf("rest: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCorruptBodyNeverCached(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		mangle       func(m *Meta, data []byte)
	}{
		{"flipped byte", ReasonChecksum, func(m *Meta, data []byte) { data[12345] ^= 1 }},
		{"wrong os_hash", ReasonHash, func(m *Meta, data []byte) { m.HashValue = strings.Repeat("ab", 64) }},
		{"longer", ReasonSize, func(m *Meta, data []byte) { m.Size-- }},
		{"shorter", ReasonSize, func(m *Meta, data []byte) { m.Size++ }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t)
			data := randomBytes(1<<20, 3)
			m := metaOf("img", data)
			served := bytes.Clone(data)
			tc.mangle(&m, served)
			u.put("img", served)
			c, reg := openCache(t, t.TempDir(), 64<<20)
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got, err := read(c, m, u.fetch("img"))
					if err == nil {
						t.Error("a corrupt body was read to a clean end")
					}
					if int64(len(got)) >= m.Size {
						t.Errorf("%d bytes of %d written: the last byte must wait for the verdict", len(got), m.Size)
					}
				}()
			}
			wg.Wait()
			waitFor(t, "the discard", func() bool {
				return counter(t, reg, "glimpse_cache_fills_discarded_total", "reason", tc.reason) >= 1
			})
			if cached, filling := c.List(); len(cached)+len(filling) != 0 {
				t.Fatalf("kept %v %v", cached, filling)
			}
			assertNoFiles(t, c.dir)
			// The next read starts again from the upstream.
			before := u.gets.Load()
			read(c, m, u.fetch("img"))
			if u.gets.Load() == before {
				t.Fatal("a corrupt fill answered the next read")
			}
		})
	}
}

// assertNoFiles checks that the directory holds nothing but the lock.
func assertNoFiles(t *testing.T, dir string) {
	t.Helper()
	des, _ := os.ReadDir(dir)
	for _, d := range des {
		if d.Name() != lockName {
			t.Errorf("left in the cache directory: %s", d.Name())
		}
	}
}

func TestTruncatedUpstreamBreaksReaders(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(1<<20, 4)
	m := u.put("img", data)
	u.truncate.Store(true)
	c, reg := openCache(t, t.TempDir(), 64<<20)
	got, err := read(c, m, u.fetch("img"))
	if err == nil || len(got) >= len(data) {
		t.Fatalf("truncated upstream: err %v, %d bytes", err, len(got))
	}
	waitFor(t, "the discard", func() bool {
		return counter(t, reg, "glimpse_cache_fills_discarded_total", "reason", ReasonUpstream)+counter(t, reg, "glimpse_cache_fills_discarded_total", "reason", ReasonSize) == 1
	})
	if c.Contains("img") {
		t.Fatal("a truncated fill was kept")
	}
}

func TestEvictionKeepsTheByteBound(t *testing.T) {
	u := newUpstream(t)
	const size = 100 << 10
	c, reg := openCache(t, t.TempDir(), 3*size+size/2)
	metas := map[string]Meta{}
	for i := range 6 {
		id := fmt.Sprintf("img%d", i)
		metas[id] = u.put(id, randomBytes(size, uint64(10+i)))
	}
	readOK := func(id string) {
		t.Helper()
		if _, err := read(c, metas[id], u.fetch(id)); err != nil {
			t.Fatal(err)
		}
		if b, _ := c.usage(); b > c.Max() {
			t.Fatalf("%d bytes cached, bound %d", b, c.Max())
		}
		var onDisk int64
		des, _ := os.ReadDir(c.dir)
		for _, d := range des {
			if st, _ := d.Info(); strings.HasSuffix(d.Name(), dataSuffix) {
				onDisk += st.Size()
			}
		}
		if onDisk > c.Max() {
			t.Fatalf("%d bytes of data on disk, bound %d", onDisk, c.Max())
		}
	}
	readOK("img0")
	readOK("img1")
	readOK("img2")
	readOK("img0") // img1 is now the least recently used
	readOK("img3")
	if c.Contains("img1") || !c.Contains("img0") || !c.Contains("img2") || !c.Contains("img3") {
		cached, _ := c.List()
		t.Fatalf("LRU order not kept: %v", cached)
	}
	if counter(t, reg, "glimpse_cache_evictions_total") != 1 {
		t.Fatal("eviction not counted")
	}
	readOK("img4")
	readOK("img5")
	if n := counter(t, reg, "glimpse_cache_entries"); n != 3 {
		t.Fatalf("%v entries", n)
	}
}

func TestLargerThanTheCachePassesThrough(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(300<<10, 5)
	m := u.put("big", data)
	c, reg := openCache(t, t.TempDir(), 200<<10)
	for range 2 {
		got, err := read(c, m, u.fetch("big"))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("pass-through: %v", err)
		}
	}
	if u.gets.Load() != 2 || counter(t, reg, "glimpse_cache_passthrough_total", "reason", passTooLarge) != 2 {
		t.Fatal("an image larger than the cache must go through every time")
	}
	assertNoFiles(t, c.dir)
	// A corrupt one is not passed through to a clean end either.
	bad := bytes.Clone(data)
	bad[7] ^= 0xff
	u.put("big", bad)
	if got, err := read(c, m, u.fetch("big")); err == nil || len(got) >= len(data) {
		t.Fatalf("corrupt pass-through: %v, %d bytes", err, len(got))
	}
}

func TestRange(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(1<<20, 6)
	m := u.put("img", data)
	c, reg := openCache(t, t.TempDir(), 64<<20)
	var b bytes.Buffer
	// A miss: the range comes from the upstream, the whole image fills in the background.
	if _, err := c.ReadRange(context.Background(), &b, m, 1000, 5000, u.fetch("img")); err != nil || !bytes.Equal(b.Bytes(), data[1000:6000]) {
		t.Fatalf("miss: %v", err)
	}
	if u.ranges.Load() != 1 {
		t.Fatal("the range did not come from the upstream")
	}
	waitFor(t, "the background fill", func() bool { return c.Contains("img") })
	if u.gets.Load() != 1 {
		t.Fatalf("%d whole downloads", u.gets.Load())
	}
	for _, r := range [][2]int64{{0, 1}, {len64(data) - 1, 1}, {4096, 70000}, {0, len64(data)}} {
		b.Reset()
		if _, err := c.ReadRange(context.Background(), &b, m, r[0], r[1], u.fetch("img")); err != nil || !bytes.Equal(b.Bytes(), data[r[0]:r[0]+r[1]]) {
			t.Fatalf("hit %v: %v", r, err)
		}
	}
	if u.ranges.Load() != 1 || counter(t, reg, "glimpse_cache_requests_total", "result", "hit") != 4 {
		t.Fatal("ranges of a cached image went upstream")
	}
	if _, err := c.ReadRange(context.Background(), &b, m, len64(data), 1, u.fetch("img")); err == nil {
		t.Fatal("a range past the end was accepted")
	}
}

func len64(b []byte) int64 { return int64(len(b)) }

func TestReopenKeepsOnlyValidEntries(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	c, err := Open(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	metas := map[string]Meta{}
	data := map[string][]byte{}
	for i, id := range []string{"good", "truncated", "nosidecar", "nodata", "wrongkey", "badjson"} {
		data[id] = randomBytes(50<<10+i, uint64(20+i))
		metas[id] = u.put(id, data[id])
		if _, err := read(c, metas[id], u.fetch(id)); err != nil {
			t.Fatal(err)
		}
	}
	// A second process may not open it.
	if _, err := Open(dir, 64<<20); err == nil {
		t.Fatal("two caches opened one directory")
	}
	c.Close()
	key := func(id string) string { return metas[id].key() }
	must(t, os.Truncate(filepath.Join(dir, key("truncated")+dataSuffix), 100))
	must(t, os.Remove(filepath.Join(dir, key("nosidecar")+metaSuffix)))
	must(t, os.Remove(filepath.Join(dir, key("nodata")+dataSuffix)))
	// wrongkey's sidecar moved under another entry's name: it describes other data.
	b, _ := os.ReadFile(filepath.Join(dir, key("wrongkey")+metaSuffix))
	other := metaOf("other", []byte("x")).key()
	must(t, os.WriteFile(filepath.Join(dir, other+metaSuffix), b, 0o600))
	must(t, os.Rename(filepath.Join(dir, key("wrongkey")+dataSuffix), filepath.Join(dir, other+dataSuffix)))
	must(t, os.Remove(filepath.Join(dir, key("wrongkey")+metaSuffix)))
	must(t, os.WriteFile(filepath.Join(dir, key("badjson")+metaSuffix), []byte("{"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, tmpPrefix+"data-123"), []byte("half a fill"), 0o600))

	c2, reg := openCache(t, dir, 64<<20)
	cached, _ := c2.List()
	if len(cached) != 1 || cached[0].ID != "good" {
		t.Fatalf("after reopening: %+v", cached)
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 3 { // .lock, good's data and sidecar
		for _, d := range des {
			t.Log(d.Name())
		}
		t.Fatalf("%d files left", len(des))
	}
	gets := u.gets.Load()
	for id, want := range data {
		got, err := read(c2, metas[id], u.fetch(id))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if got := u.gets.Load() - gets; got != 5 {
		t.Fatalf("%d downloads after the reopen, want 5 (all but good)", got)
	}
	if counter(t, reg, "glimpse_cache_requests_total", "result", "hit") != 1 {
		t.Fatal("good was not a hit")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestReopenRestoresLRUOrder(t *testing.T) {
	u := newUpstream(t)
	dir := t.TempDir()
	c, err := Open(dir, 1<<20)
	must(t, err)
	var metas []Meta
	for i := range 3 {
		id := fmt.Sprint("img", i)
		metas = append(metas, u.put(id, randomBytes(300<<10, uint64(30+i))))
		_, err := read(c, metas[i], u.fetch(id))
		must(t, err)
		time.Sleep(5 * time.Millisecond) // distinct access times
	}
	_, err = read(c, metas[0], u.fetch("img0")) // img1 becomes the oldest
	must(t, err)
	c.Close()
	// A smaller bound on the next start evicts the least recently used.
	c2, _ := openCache(t, dir, 700<<10)
	if c2.Contains("img1") || !c2.Contains("img0") || !c2.Contains("img2") {
		cached, _ := c2.List()
		t.Fatalf("%+v", cached)
	}
}

// failingFile is a temporary file on a disk that fills up after limit bytes.
type failingFile struct {
	*os.File
	limit int64
	n     int64
}

func (f *failingFile) Write(p []byte) (int, error) {
	if f.n+int64(len(p)) > f.limit {
		return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	f.n += int64(len(p))
	return f.File.Write(p)
}

func TestFailingDiskPassesThrough(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(4<<20, 7)
	m := u.put("img", data)
	c, reg := openCache(t, t.TempDir(), 64<<20)

	// The disk fills up in the middle of a fill that two readers follow.
	c.createTemp = func() (tempFile, error) {
		f, err := os.CreateTemp(c.dir, tmpPrefix+"data-*")
		return &failingFile{File: f, limit: 1 << 20}, err
	}
	hold := make(chan struct{})
	u.mu.Lock()
	u.hold = hold
	u.mu.Unlock()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := read(c, m, u.fetch("img"))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("a download failed with the cache disk: %v, %d bytes", err, len(got))
			}
		}()
	}
	waitFor(t, "both readers", func() bool {
		return counter(t, reg, "glimpse_cache_requests_total", "result", "miss")+counter(t, reg, "glimpse_cache_requests_total", "result", "coalesced") == 2
	})
	close(hold)
	wg.Wait()
	// The readers may be done (from the upstream) before the fill has discarded itself; and
	// a reader that comes after the first fill failed starts a fill of its own, which fails
	// the same way: every fill started is discarded for the disk.
	waitFor(t, "the failed fills discarded", func() bool {
		fills := counter(t, reg, "glimpse_cache_requests_total", "result", "miss") - counter(t, reg, "glimpse_cache_passthrough_total")
		return fills >= 1 && counter(t, reg, "glimpse_cache_fills_discarded_total", "reason", ReasonDisk) == fills
	})
	if c.Contains("img") {
		t.Fatal("the failed fill was kept")
	}
	assertNoFiles(t, c.dir)

	// No temporary file at all: straight through.
	c.createTemp = func() (tempFile, error) { return nil, &os.PathError{Op: "open", Path: c.dir, Err: syscall.EIO} }
	u.mu.Lock()
	u.hold = nil
	u.mu.Unlock()
	got, err := read(c, m, u.fetch("img"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("pass-through: %v", err)
	}
	if counter(t, reg, "glimpse_cache_passthrough_total", "reason", passDisk) != 1 {
		t.Fatal("pass-through not counted")
	}
}

func TestDeleteAndCloseDuringAFill(t *testing.T) {
	u := newUpstream(t)
	data := randomBytes(1<<20, 8)
	m := u.put("img", data)
	hold := make(chan struct{})
	u.hold = hold
	c, reg := openCache(t, t.TempDir(), 64<<20)
	done := make(chan error, 1)
	go func() { _, err := read(c, m, u.fetch("img")); done <- err }()
	waitFor(t, "the fill", func() bool { _, f := c.List(); return len(f) == 1 })
	if !c.Delete("img") {
		t.Fatal("Delete found nothing")
	}
	if err := <-done; err == nil {
		t.Fatal("a deleted fill ended cleanly")
	}
	close(hold)
	waitFor(t, "the discard", func() bool {
		return counter(t, reg, "glimpse_cache_fills_discarded_total", "reason", ReasonDeleted) == 1
	})
	if c.Contains("img") {
		t.Fatal("a deleted fill was committed")
	}

	// Close discards a fill in progress; its reader sees a broken transfer.
	u.mu.Lock()
	u.hold = make(chan struct{})
	u.mu.Unlock()
	go func() { _, err := read(c, m, u.fetch("img")); done <- err }()
	waitFor(t, "the fill", func() bool { _, f := c.List(); return len(f) == 1 })
	c.Close()
	if err := <-done; err == nil {
		t.Fatal("a fill cut by Close ended cleanly")
	}
	if counter(t, reg, "glimpse_cache_fills_discarded_total", "reason", ReasonCancelled) != 1 {
		t.Fatal("not counted as cancelled")
	}
	assertNoFiles(t, c.dir)
	if _, err := read(c, m, u.fetch("img")); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

func TestClearAndPrefetch(t *testing.T) {
	u := newUpstream(t)
	c, _ := openCache(t, t.TempDir(), 64<<20)
	m := u.put("img", randomBytes(100<<10, 9))
	if err := c.Fill(context.Background(), m, u.fetch("img")); err != nil || !c.Contains("img") {
		t.Fatalf("Fill: %v", err)
	}
	if err := c.Fill(context.Background(), m, u.fetch("img")); err != nil || u.gets.Load() != 1 {
		t.Fatal("a second Fill downloaded again")
	}
	if n := c.Clear(); n != 1 || c.Contains("img") {
		t.Fatal("Clear")
	}
	assertNoFiles(t, c.dir)
	bad := m
	bad.Checksum = "nothex"
	if err := c.Fill(context.Background(), bad, u.fetch("img")); !errors.Is(err, ErrUncacheable) {
		t.Fatalf("Fill with bad metadata: %v", err)
	}
}

func TestMetricsPreinitialised(t *testing.T) {
	_, reg := openCache(t, t.TempDir(), 1<<20)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP glimpse_cache_fills_discarded_total Fills discarded, by reason: size, checksum, os_hash, upstream, disk, cancelled, deleted.
# TYPE glimpse_cache_fills_discarded_total counter
glimpse_cache_fills_discarded_total{reason="cancelled"} 0
glimpse_cache_fills_discarded_total{reason="checksum"} 0
glimpse_cache_fills_discarded_total{reason="deleted"} 0
glimpse_cache_fills_discarded_total{reason="disk"} 0
glimpse_cache_fills_discarded_total{reason="os_hash"} 0
glimpse_cache_fills_discarded_total{reason="size"} 0
glimpse_cache_fills_discarded_total{reason="upstream"} 0
`), "glimpse_cache_fills_discarded_total"); err != nil {
		t.Fatal(err)
	}
}
