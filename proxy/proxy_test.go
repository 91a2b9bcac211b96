package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"glimpse/cache"
	"glimpse/inspect"
	"glimpse/internal/qemutest"
)

type rig struct {
	g     *fakeGlance
	c     *cache.Cache
	p     *Proxy
	srv   *httptest.Server
	admin *httptest.Server
	reg   *prometheus.Registry
}

func newRig(t *testing.T, cacheSize int64, opts ...Option) *rig {
	t.Helper()
	r := &rig{g: newFakeGlance(t), reg: prometheus.NewRegistry()}
	c, err := cache.Open(t.TempDir(), cacheSize, cache.WithRegisterer(r.reg))
	if err != nil {
		t.Fatal(err)
	}
	r.c = c
	up, _ := url.Parse(r.g.srv.URL)
	r.p, err = New(up, c, append([]Option{WithRegistry(r.reg)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	r.srv = httptest.NewServer(r.p.Handler())
	r.admin = httptest.NewServer(r.p.AdminHandler())
	t.Cleanup(func() {
		r.srv.Close()
		r.admin.Close()
		r.p.Close()
		c.Close()
	})
	return r
}

func identity(project string) http.Header {
	return http.Header{"X-Identity-Status": {"Confirmed"}, "X-Project-Id": {project}, "X-User-Id": {"u-" + project}, "X-Roles": {"member"}}
}

// do sends a request and reads the whole answer; err is the transfer's error.
func do(t *testing.T, method, u string, h http.Header, body io.Reader) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				ok := false
				for _, lp := range m.GetLabel() {
					ok = ok || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				if !ok {
					continue next
				}
			}
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 0 && i%1000 == 0 {
			t.Logf("still waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fileURL(r *rig, id string) string { return r.srv.URL + "/v2/images/" + id + "/file" }

func TestConcurrentColdDownloadsOneUpstreamDownload(t *testing.T) {
	r := newRig(t, 64<<20)
	data := randomBytes(4<<20+3, 1)
	img := r.g.add("img-1", "pa", "private", data)
	hold := make(chan struct{})
	img.hold = hold
	const clients = 32
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, b, err := do(t, "GET", fileURL(r, "img-1"), identity("pa"), nil)
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(b, data) {
				t.Errorf("client %d: %v %v, %d bytes", i, resp, err, len(b))
				return
			}
			if resp.Header.Get("Content-Md5") != *img.Checksum || resp.Header.Get("Content-Type") != "application/octet-stream" ||
				resp.ContentLength != int64(len(data)) {
				t.Errorf("client %d: headers %v", i, resp.Header)
			}
		}()
	}
	waitFor(t, "every client on the one fill", func() bool {
		return metric(t, r.reg, "glimpse_cache_requests_total", "result", "miss")+metric(t, r.reg, "glimpse_cache_requests_total", "result", "coalesced") == clients
	})
	close(hold)
	wg.Wait()
	if n := r.g.dataGets.Load(); n != 1 {
		t.Fatalf("%d upstream downloads for %d concurrent cold requests, want 1", n, clients)
	}
	// Warm: from the cache.
	if _, b, err := do(t, "GET", fileURL(r, "img-1"), identity("pa"), nil); err != nil || !bytes.Equal(b, data) {
		t.Fatal(err)
	}
	if r.g.dataGets.Load() != 1 || metric(t, r.reg, "glimpse_cache_requests_total", "result", "hit") != 1 {
		t.Fatal("the warm download was not a hit")
	}
}

func TestCorruptOrTruncatedUpstreamBreaksTheTransfer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mangle func(img *fakeImage)
	}{
		{"corrupt", func(img *fakeImage) {
			img.served = bytes.Clone(img.data)
			img.served[len(img.served)/3] ^= 0x40
		}},
		{"truncated", func(img *fakeImage) { img.truncate = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, 64<<20)
			data := randomBytes(1<<20, 2)
			img := r.g.add("img", "pa", "private", data)
			tc.mangle(img)
			for i := range 2 {
				resp, b, err := do(t, "GET", fileURL(r, "img"), identity("pa"), nil)
				if err == nil {
					t.Fatalf("download %d ended cleanly (%d, %d bytes)", i, resp.StatusCode, len(b))
				}
				if len(b) >= len(data) {
					t.Fatalf("download %d: all %d bytes arrived", i, len(b))
				}
			}
			if n := r.g.dataGets.Load(); n != 2 {
				t.Fatalf("%d upstream downloads: a bad fill must never answer the next request", n)
			}
			if r.c.Contains("img") {
				t.Fatal("a bad body was cached")
			}
		})
	}
}

func TestAuthorizationPerCaller(t *testing.T) {
	r := newRig(t, 64<<20, WithAuthTTL(time.Hour))
	data := randomBytes(100<<10, 3)
	r.g.add("priv", "pa", "private", data)
	direct := func(h http.Header) (int, []byte) {
		resp, b, err := do(t, "GET", r.g.srv.URL+"/v2/images/priv/file", h, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	wantCode, _ := direct(identity("pb"))
	if wantCode != 404 {
		t.Fatalf("fake upstream: %d", wantCode)
	}
	checkB := func(when string) {
		t.Helper()
		for _, h := range []http.Header{identity("pb"), {}} {
			resp, b, err := do(t, "GET", fileURL(r, "priv"), h, nil)
			code, body := direct(h)
			if err != nil || resp.StatusCode != code || !bytes.Equal(b, body) {
				t.Fatalf("%s: caller %v got %d %q, the upstream says %d %q", when, h, resp.StatusCode, b, code, body)
			}
		}
	}
	checkB("cold")
	if _, b, err := do(t, "GET", fileURL(r, "priv"), identity("pa"), nil); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("owner: %v", err)
	}
	checkB("warm")
	// The owner's yes is kept: its next download asks the upstream nothing.
	metaGets := r.g.metaGets.Load()
	if _, b, err := do(t, "GET", fileURL(r, "priv"), identity("pa"), nil); err != nil || !bytes.Equal(b, data) {
		t.Fatal(err)
	}
	if r.g.metaGets.Load() != metaGets || metric(t, r.reg, "glimpse_proxy_auth_checks_total", "result", "cached") != 1 {
		t.Fatal("the owner's decision was not kept")
	}
	// Same project, another token: asked again.
	h := identity("pa")
	h.Set("X-Auth-Token", "another")
	do(t, "GET", fileURL(r, "priv"), h, nil)
	if r.g.metaGets.Load() != metaGets+1 {
		t.Fatal("a decision was shared between credentials")
	}
	if metric(t, r.reg, "glimpse_proxy_auth_checks_total", "result", "denied") != 4 {
		t.Fatalf("denied checks: %v", metric(t, r.reg, "glimpse_proxy_auth_checks_total", "result", "denied"))
	}
	// A queued image is the upstream's to answer (204).
	r.g.addQueued("q", "pa", "raw")
	if resp, _, _ := do(t, "GET", fileURL(r, "q"), identity("pa"), nil); resp.StatusCode != 204 {
		t.Fatalf("queued image: %d", resp.StatusCode)
	}
	if r.g.dataGets.Load() != 1 {
		t.Fatalf("%d data downloads", r.g.dataGets.Load())
	}
}

func TestRangeRequests(t *testing.T) {
	r := newRig(t, 64<<20)
	data := randomBytes(200_000, 4)
	img := r.g.add("img", "pa", "private", data)
	get := func(h http.Header) (*http.Response, []byte) {
		t.Helper()
		for k, v := range identity("pa") {
			h[k] = v
		}
		h.Set("Accept", "application/json")
		resp, b, err := do(t, "GET", fileURL(r, "img"), h, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	check := func(spec string, from, to int) {
		t.Helper()
		resp, b := get(http.Header{"Range": {spec}})
		want := fmt.Sprintf("bytes %d-%d/%d", from, to, len(data))
		if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != want || !bytes.Equal(b, data[from:to+1]) ||
			resp.Header.Get("Content-Md5") != *img.Checksum {
			t.Fatalf("%s: %d %q, %d bytes", spec, resp.StatusCode, resp.Header.Get("Content-Range"), len(b))
		}
	}
	// Cold: from the upstream, while a fill starts.
	check("bytes=10-19", 10, 19)
	if r.g.rangeGets.Load() != 1 {
		t.Fatal("a cold range did not come from the upstream")
	}
	waitFor(t, "the background fill", func() bool { return r.c.Contains("img") })
	for _, c := range []struct {
		spec     string
		from, to int
	}{{"bytes=10-19", 10, 19}, {"bytes=199990-", 199990, 199999}, {"bytes=-5", 199995, 199999}, {"bytes=199999-300000", 199999, 199999}, {"bytes=0-", 0, 199999}} {
		check(c.spec, c.from, c.to)
	}
	resp, b := get(http.Header{"Content-Range": {"bytes 1-2/*"}})
	if resp.StatusCode != 206 || !bytes.Equal(b, data[1:3]) {
		t.Fatalf("legacy Content-Range: %d", resp.StatusCode)
	}
	if r.g.rangeGets.Load() != 1 || r.g.dataGets.Load() != 1 {
		t.Fatal("warm ranges went upstream")
	}
	for spec, want := range map[string]string{
		"bytes=200000-": `{"message":"The Range requested is not available.<br /><br />\nInvalid start position in Range header. Start position MUST be in the inclusive range [0, 199999].\n\n","code":"416 Request Range Not Satisfiable","title":"Request Range Not Satisfiable"}`,
		"bytes=5-2":     `{"message":"The Range requested is not available.<br /><br />\nInvalid Range header.\n\n","code":"416 Request Range Not Satisfiable","title":"Request Range Not Satisfiable"}`,
		"items=1-2":     `{"message":"The Range requested is not available.<br /><br />\nInvalid Range header.\n\n","code":"416 Request Range Not Satisfiable","title":"Request Range Not Satisfiable"}`,
		"bytes=0-1,5-6": `{"message":"Requests with multiple ranges are not supported in Glance. You may make multiple single-range requests instead.<br /><br />\n\n\n","code":"400 Bad Request","title":"Bad Request"}`,
	} {
		resp, b := get(http.Header{"Range": {spec}})
		if string(b) != want || resp.StatusCode != map[bool]int{true: 400, false: 416}[strings.Contains(spec, ",")] {
			t.Errorf("%s: %d %s", spec, resp.StatusCode, b)
		}
	}
}

func TestForwardedUnchanged(t *testing.T) {
	r := newRig(t, 1<<20)
	h := identity("pa")
	h.Set("X-Auth-Token", "tok")
	h.Set("Content-Type", "application/openstack-images-v2.1-json-patch")
	resp, b, err := do(t, "PATCH", r.srv.URL+"/v2/images/x?a=1&b=%2F", h, strings.NewReader(`[{"op":"add"}]`))
	if err != nil || resp.StatusCode != 201 || resp.Header.Get("X-Fake") != "yes" {
		t.Fatalf("%v %v", resp, err)
	}
	var echo map[string]string
	json.Unmarshal(b, &echo)
	if echo["method"] != "PATCH" || echo["path"] != "/v2/images/x" || echo["query"] != "a=1&b=%2F" || echo["body"] != `[{"op":"add"}]` {
		t.Fatalf("echo %v", echo)
	}
	got := r.g.lastOther.Load().(http.Header)
	for _, k := range []string{"X-Auth-Token", "X-Identity-Status", "X-Project-Id", "X-User-Id", "X-Roles", "Content-Type"} {
		if got.Get(k) != h.Get(k) {
			t.Errorf("%s: %q, sent %q", k, got.Get(k), h.Get(k))
		}
	}
	// HEAD on a file is Glance's to answer.
	do(t, "HEAD", fileURL(r, "x"), h, nil)
	if r.g.otherCalls.Load() != 2 {
		t.Fatal("HEAD was not forwarded")
	}
	if resp, b, _ := do(t, "GET", r.srv.URL+"/healthcheck", nil, nil); resp.StatusCode != 200 || string(b) != "OK" {
		t.Fatal("healthcheck")
	}
	_, b, _ = do(t, "GET", r.srv.URL+"/metrics", nil, nil)
	for _, name := range []string{"glimpse_cache_requests_total", "glimpse_cache_served_bytes_total", "glimpse_cache_fills_committed_total",
		"glimpse_cache_fills_discarded_total", "glimpse_cache_evictions_total", "glimpse_cache_size_bytes", "glimpse_cache_entries",
		"glimpse_proxy_auth_checks_total", "glimpse_cache_upstream_read_bytes_total"} {
		if !bytes.Contains(b, []byte(name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

func TestUploadsInspected(t *testing.T) {
	qemutest.Need(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemutest.Img(t, "create", "-f", "qcow2", base, "1M")
	child := filepath.Join(dir, "child.qcow2")
	qemutest.Img(t, "create", "-f", "qcow2", "-b", base, "-F", "qcow2", child, "1M")
	good := filepath.Join(dir, "good.qcow2")
	qemutest.Img(t, "create", "-f", "qcow2", good, "16M")
	vhd := filepath.Join(dir, "fixed.vhd")
	qemutest.Img(t, "create", "-f", "vpc", "-o", "subformat=fixed", vhd, "2M")
	raw := filepath.Join(dir, "disk.raw")
	os.WriteFile(raw, randomBytes(3<<20, 5), 0o600)

	r := newRig(t, 1<<20, WithPolicy(inspect.Policy{AllowFormats: []inspect.Format{inspect.QCOW2, inspect.Raw}}))
	for _, tc := range []struct {
		name, file, declared, path string
		code                       int
		finding                    string
	}{
		{"qcow2 with a backing file", child, "qcow2", "file", 400, inspect.FindBackingFile},
		{"raw declared qcow2", raw, "qcow2", "file", 400, inspect.FindFormatMismatch},
		{"raw declared qcow2, staged", raw, "qcow2", "stage", 400, inspect.FindFormatMismatch},
		{"qcow2 declared raw", good, "raw", "file", 400, inspect.FindFormatMismatch},
		{"fixed vhd declared raw (decided at its footer)", vhd, "raw", "file", 400, inspect.FindFormatMismatch},
		{"vhd not allowed", raw, "vhd", "file", 400, ""},
		{"good qcow2", good, "qcow2", "file", 204, ""},
		{"good raw", raw, "raw", "file", 204, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ReplaceAll(tc.name, " ", "-")
			r.g.addQueued(id, "pa", tc.declared)
			f, err := os.Open(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			h := identity("pa")
			h.Set("Content-Type", "application/octet-stream")
			h.Set("Accept", "application/json")
			req, _ := http.NewRequest("PUT", r.srv.URL+"/v2/images/"+id+"/"+tc.path, f)
			req.ContentLength = st.Size()
			req.Header = h
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			r.g.mu.Lock()
			img := *r.g.images[id]
			r.g.mu.Unlock()
			if tc.code == 400 {
				if !strings.Contains(string(b), `"code":"400 Bad Request"`) || !strings.Contains(string(b), tc.finding) {
					t.Fatalf("body %s", b)
				}
				if img.completed != 0 {
					t.Fatal("the upstream received a complete body of a refused upload")
				}
				if img.Status != "queued" {
					t.Fatalf("refused image is %s", img.Status)
				}
			} else if want, err := os.ReadFile(tc.file); err != nil {
				t.Fatal(err)
			} else if img.uploads != 1 || img.completed != 1 || !bytes.Equal(img.data, want) {
				t.Fatalf("an accepted upload did not reach the upstream whole: %d requests, %d complete, %d of %d bytes", img.uploads, img.completed, len(img.data), len(want))
			}
		})
	}
	// Another project's image: the upstream's 404, and no byte of the upload goes anywhere.
	r.g.addQueued("theirs", "pb", "raw")
	uploads := r.g.uploads.Load()
	resp, _, _ := do(t, "PUT", r.srv.URL+"/v2/images/theirs/file", identity("pa"), bytes.NewReader(randomBytes(1000, 6)))
	if resp.StatusCode != 404 || r.g.uploads.Load() != uploads {
		t.Fatalf("%d, %d uploads", resp.StatusCode, r.g.uploads.Load()-uploads)
	}
	if metric(t, r.reg, "glimpse_proxy_uploads_total", "result", "rejected") != 6 {
		t.Fatalf("rejections: %v", metric(t, r.reg, "glimpse_proxy_uploads_total", "result", "rejected"))
	}
}

func TestUploadSizeLimit(t *testing.T) {
	r := newRig(t, 1<<20, WithMaxImageSize(1<<20))
	r.g.addQueued("big", "pa", "raw")
	h := identity("pa")
	h.Set("Accept", "application/json")
	resp, b, _ := do(t, "PUT", r.srv.URL+"/v2/images/big/file", h, bytes.NewReader(randomBytes(3<<20, 7)))
	if resp.StatusCode != 400 || !strings.Contains(string(b), inspect.FindTooLarge) || r.g.completed.Load() != 0 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

func TestAdminCacheAPI(t *testing.T) {
	r := newRig(t, 64<<20, WithServiceCredentials("", identity("admin-project")), WithMaxFills(2))
	// The service credentials see every image: make them admin.
	r.p.service.Set("X-Roles", "admin")
	data := randomBytes(300<<10, 8)
	r.g.add("a", "pa", "private", data)
	r.g.add("b", "pb", "public", randomBytes(1000, 9))
	for _, id := range []string{"a", "b"} {
		if resp, b, _ := do(t, "PUT", r.admin.URL+"/v2/cache/"+id, nil, nil); resp.StatusCode != 202 {
			t.Fatalf("queue %s: %d %s", id, resp.StatusCode, b)
		}
	}
	if resp, _, _ := do(t, "PUT", r.admin.URL+"/v2/cache/nope", nil, nil); resp.StatusCode != 404 {
		t.Fatalf("queue of a missing image: %d", resp.StatusCode)
	}
	waitFor(t, "the prefetches", func() bool { return r.c.Contains("a") && r.c.Contains("b") })
	var list CacheList
	_, b, _ := do(t, "GET", r.admin.URL+"/v2/cache", nil, nil)
	if err := json.Unmarshal(b, &list); err != nil || len(list.CachedImages) != 2 || list.QueuedImages == nil {
		t.Fatalf("%s", b)
	}
	// A prefetched image is a hit for a caller the upstream allows.
	if _, got, err := do(t, "GET", fileURL(r, "a"), identity("pa"), nil); err != nil || !bytes.Equal(got, data) || r.g.dataGets.Load() != 2 {
		t.Fatalf("%v, %d downloads", err, r.g.dataGets.Load())
	}
	if resp, _, _ := do(t, "DELETE", r.admin.URL+"/v2/cache/a", nil, nil); resp.StatusCode != 204 || r.c.Contains("a") {
		t.Fatal("delete")
	}
	if resp, _, _ := do(t, "DELETE", r.admin.URL+"/v2/cache/a", nil, nil); resp.StatusCode != 404 {
		t.Fatal("second delete")
	}
	if resp, _, _ := do(t, "DELETE", r.admin.URL+"/v2/cache", http.Header{"X-Image-Cache-Clear-Target": {"bogus"}}, nil); resp.StatusCode != 400 {
		t.Fatal("bad clear target")
	}
	if resp, _, _ := do(t, "DELETE", r.admin.URL+"/v2/cache", http.Header{"X-Image-Cache-Clear-Target": {"cache"}}, nil); resp.StatusCode != 204 || r.c.Contains("b") {
		t.Fatal("clear")
	}
	if metric(t, r.reg, "glimpse_proxy_prefetches_total", "result", "committed") != 2 {
		t.Fatal("prefetches not counted")
	}
}
