package proxy

// Integration tests against the real Glance (Debian's glance-api, OpenStack Zed), started on
// loopback by ../shared/glance/glance-server, once per package and only when a test asks.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/imagedata"
	"github.com/gophercloud/gophercloud/v2/openstack/image/v2/images"
	"github.com/gophercloud/gophercloud/v2/pagination"
	"github.com/prometheus/client_golang/prometheus"

	"glimpse/cache"
	"glimpse/internal/qemutest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopGlances()
	os.Exit(code)
}

// realGlance is one glance-api started by glance-server.
type realGlance struct {
	url, state string
	err        error
}

type glanceSet struct {
	mu sync.Mutex
	m  map[string]*realGlance // by mode: "auth" or "noauth"
}

var glances = glanceSet{m: map[string]*realGlance{}}

// glanceServerScript finds ../shared/glance/glance-server beside the repository.
func glanceServerScript() string {
	if p := os.Getenv("GLANCE_SERVER"); p != "" {
		return p
	}
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		p := filepath.Join(d, "shared", "glance", "glance-server")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// needGlance starts (once) a Glance in mode "auth" (trusts identity headers) or "noauth"
// (every caller an admin, for the glance CLI). It skips the test when Glance cannot start
// on a developer's machine and fails it under CI=true.
func needGlance(t *testing.T, mode string) *realGlance {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real Glance")
	}
	glances.mu.Lock()
	g := glances.m[mode]
	if g == nil {
		g = &realGlance{}
		glances.m[mode] = g
		script := glanceServerScript()
		switch {
		case script == "":
			g.err = fmt.Errorf("../shared/glance/glance-server not found beside the repository (set GLANCE_SERVER)")
		case os.Geteuid() != 0:
			g.err = fmt.Errorf("glance-server must run as root")
		default:
			port, err := freePort()
			if err == nil {
				g.state, err = os.MkdirTemp("", "glimpse-proxy-glance-"+mode+"-")
			}
			if err == nil {
				args := []string{"start", g.state, fmt.Sprint(port)}
				if mode == "noauth" {
					args = append(args, "--noauth")
				}
				out, rerr := exec.Command(script, args...).CombinedOutput()
				if rerr != nil {
					err = fmt.Errorf("glance-server %s: %v\n%s", strings.Join(args, " "), rerr, out)
				}
			}
			g.err = err
			g.url = fmt.Sprintf("http://127.0.0.1:%d", port)
		}
	}
	glances.mu.Unlock()
	if g.err != nil {
		if qemutest.InCI() {
			t.Fatalf("real Glance: %v", g.err)
		}
		t.Skipf("real Glance not available: %v", g.err)
	}
	return g
}

func stopGlances() {
	for _, g := range glances.m {
		if g.state != "" && g.err == nil {
			exec.Command(glanceServerScript(), "stop", g.state).Run()
			os.RemoveAll(g.state)
		}
	}
}

// dataDownloads counts the image data that really left Glance (its access log).
func (g *realGlance) dataDownloads(t *testing.T, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(g.state, "glance-api.log"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"GET /v2/images/` + regexp.QuoteMeta(id) + `/file HTTP/1\.1" 200 `)
	return len(re.FindAll(b, -1))
}

// proxyTo runs a proxy in front of upstream for one test.
func proxyTo(t *testing.T, upstream string) (*httptest.Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := cache.Open(t.TempDir(), 256<<20, cache.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	up, _ := url.Parse(upstream)
	p, err := New(up, c, WithRegistry(reg))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(func() { srv.Close(); p.Close(); c.Close() })
	return srv, reg
}

func TestRealGlancePrivateImage(t *testing.T) {
	g := needGlance(t, "auth")
	srv, reg := proxyTo(t, g.url)
	a, b := identity("project-a"), identity("project-b")
	a.Set("Content-Type", "application/json")
	resp, body, err := do(t, "POST", srv.URL+"/v2/images", a, strings.NewReader(`{"name": "private-a", "disk_format": "raw", "container_format": "bare", "visibility": "private"}`))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create through glimpse: %v %v %s", resp, err, body)
	}
	var img struct{ ID, Status string }
	json.Unmarshal(body, &img)
	data := randomBytes(3<<20+5, 10)
	a.Set("Content-Type", "application/octet-stream")
	if resp, body, err := do(t, "PUT", srv.URL+"/v2/images/"+img.ID+"/file", a, bytes.NewReader(data)); err != nil || resp.StatusCode != 204 {
		t.Fatalf("upload through glimpse: %v %v %s", resp, err, body)
	}
	a.Del("Content-Type")

	// Project B, cold: Glance's own 404, byte for byte.
	checkB := func(when string) {
		t.Helper()
		for _, accept := range []string{"", "application/json"} {
			h := b.Clone()
			if accept != "" {
				h.Set("Accept", accept)
			}
			dresp, dbody, _ := do(t, "GET", g.url+"/v2/images/"+img.ID+"/file", h, nil)
			presp, pbody, err := do(t, "GET", srv.URL+"/v2/images/"+img.ID+"/file", h, nil)
			if err != nil || presp.StatusCode != 404 || dresp.StatusCode != 404 || !bytes.Equal(pbody, dbody) ||
				presp.Header.Get("Content-Type") != dresp.Header.Get("Content-Type") {
				t.Fatalf("%s: project B through glimpse got %d %q, Glance says %d %q", when, presp.StatusCode, pbody, dresp.StatusCode, dbody)
			}
		}
	}
	checkB("cold")
	for i := range 2 {
		resp, got, err := do(t, "GET", srv.URL+"/v2/images/"+img.ID+"/file", a, nil)
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, data) {
			t.Fatalf("download %d: %v %v", i, resp, err)
		}
		dresp, _, _ := do(t, "GET", g.url+"/v2/images/"+img.ID+"/file", http.Header{"Range": {"bytes=0-0"}, "X-Identity-Status": {"Confirmed"}, "X-Project-Id": {"project-a"}, "X-Roles": {"member"}}, nil)
		if resp.Header.Get("Content-Md5") != dresp.Header.Get("Content-Md5") || resp.Header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("headers %v vs Glance's %v", resp.Header, dresp.Header)
		}
	}
	if n := g.dataDownloads(t, img.ID); n != 1 {
		t.Fatalf("Glance's log shows %d data downloads for two downloads through glimpse, want 1", n)
	}
	if metric(t, reg, "glimpse_cache_requests_total", "result", "hit") != 1 {
		t.Fatal("the second download was not a hit")
	}
	checkB("warm")

	// An upload that is not what it declares never makes the image active.
	a.Set("Content-Type", "application/json")
	_, body, _ = do(t, "POST", srv.URL+"/v2/images", a, strings.NewReader(`{"name": "liar", "disk_format": "qcow2", "container_format": "bare"}`))
	var liar struct{ ID string }
	json.Unmarshal(body, &liar)
	a.Set("Content-Type", "application/octet-stream")
	a.Set("Accept", "application/json")
	resp, body, _ = do(t, "PUT", srv.URL+"/v2/images/"+liar.ID+"/file", a, bytes.NewReader(randomBytes(2<<20, 11)))
	if resp.StatusCode != 400 || !strings.Contains(string(body), "format-mismatch") {
		t.Fatalf("raw declared qcow2: %d %s", resp.StatusCode, body)
	}
	_, body, _ = do(t, "GET", g.url+"/v2/images/"+liar.ID, a, nil)
	json.Unmarshal(body, &img)
	if img.Status == "active" {
		t.Fatal("a refused upload made the image active in Glance")
	}
}

// headerTransport adds identity headers, as keystonemiddleware would have.
type headerTransport struct{ h http.Header }

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.h {
		r.Header[k] = v
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestRealGlanceGophercloud(t *testing.T) {
	g := needGlance(t, "auth")
	srv, reg := proxyTo(t, g.url)
	ctx := context.Background()
	pc := &gophercloud.ProviderClient{HTTPClient: http.Client{Transport: headerTransport{identity("project-gc")}}}
	sc := &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: srv.URL + "/", ResourceBase: srv.URL + "/v2/"}
	vis := images.ImageVisibilityPrivate
	img, err := images.Create(ctx, sc, images.CreateOpts{Name: "gophercloud", DiskFormat: "raw", ContainerFormat: "bare", Visibility: &vis}).Extract()
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	data := randomBytes(1<<20+7, 12)
	if err := imagedata.Upload(ctx, sc, img.ID, bytes.NewReader(data)).ExtractErr(); err != nil {
		t.Fatalf("upload: %v", err)
	}
	got, err := images.Get(ctx, sc, img.ID).Extract()
	if err != nil || got.Status != images.ImageStatusActive || got.SizeBytes != int64(len(data)) {
		t.Fatalf("get: %v %+v", err, got)
	}
	for range 2 {
		rc, err := imagedata.Download(ctx, sc, img.ID).Extract()
		if err != nil {
			t.Fatalf("download: %v", err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(b, data) {
			t.Fatalf("download: %v, %d bytes", err, len(b))
		}
	}
	found := false
	err = images.List(sc, images.ListOpts{}).EachPage(ctx, func(_ context.Context, p pagination.Page) (bool, error) {
		list, err := images.ExtractImages(p)
		for _, i := range list {
			found = found || i.ID == img.ID
		}
		return true, err
	})
	if err != nil || !found {
		t.Fatalf("list: %v, found %v", err, found)
	}
	if g.dataDownloads(t, img.ID) != 1 || metric(t, reg, "glimpse_cache_requests_total", "result", "hit") != 1 {
		t.Fatal("the second download was not from the cache")
	}
	if err := images.Delete(ctx, sc, img.ID).ExtractErr(); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

// glanceCLI runs the glance command (python3-glanceclient) against url with a fresh HOME.
func glanceCLI(t *testing.T, url string, args ...string) string {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", append([]string{"-c", "import sys; from glanceclient.shell import main; sys.argv[0] = 'glance'; sys.exit(main())",
		"--os-image-url", url, "--os-auth-token", "x"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	cmd.Stdin = nil
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("glance %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestRealGlanceCLI(t *testing.T) {
	g := needGlance(t, "noauth")
	if err := exec.Command("/usr/bin/python3", "-c", "import glanceclient").Run(); err != nil {
		msg := "python3-glanceclient not installed (glance-server installs it with glance-api)"
		if qemutest.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	srv, reg := proxyTo(t, g.url)
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.raw")
	data := randomBytes(2<<20+1, 13)
	os.WriteFile(src, data, 0o600)
	out := glanceCLI(t, srv.URL, "image-create", "--name", "via-glimpse", "--disk-format", "raw", "--container-format", "bare", "--file", src)
	m := regexp.MustCompile(`\|\s+id\s+\|\s+([0-9a-f-]{36})\s+\|`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "active") {
		t.Fatalf("image-create:\n%s", out)
	}
	id := m[1]
	if out := glanceCLI(t, srv.URL, "image-list"); !strings.Contains(out, id) {
		t.Fatalf("image-list:\n%s", out)
	}
	if out := glanceCLI(t, srv.URL, "image-show", id); !strings.Contains(out, "via-glimpse") {
		t.Fatalf("image-show:\n%s", out)
	}
	for i := range 2 {
		dst := filepath.Join(dir, fmt.Sprint("out", i))
		glanceCLI(t, srv.URL, "image-download", "--file", dst, id)
		if b, _ := os.ReadFile(dst); !bytes.Equal(b, data) {
			t.Fatalf("image-download %d: %d bytes differ", i, len(b))
		}
	}
	if n := g.dataDownloads(t, id); n != 1 || metric(t, reg, "glimpse_cache_requests_total", "result", "hit") != 1 {
		t.Fatalf("Glance sent the data %d times for two image-downloads through glimpse", n)
	}
	glanceCLI(t, srv.URL, "image-delete", id)
}
