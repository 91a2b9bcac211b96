package store

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"glimpse/api"
	"glimpse/inspect"
)

// newServer starts a store over t.TempDir() behind httptest.
func newServer(t testing.TB, auth Authenticator, mod ...func(*Config)) (*Store, *httptest.Server) {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), Auth: auth, Registry: prometheus.NewRegistry()}
	for _, m := range mod {
		m(&cfg)
	}
	st, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(st.Handler())
	t.Cleanup(func() {
		srv.Close()
		st.Close()
	})
	return st, srv
}

// client makes API requests as one caller.
type client struct {
	t    testing.TB
	base string
	hdr  http.Header
}

// as is a caller under --auth headers (roles comma-separated).
func as(t testing.TB, base, project, roles string) *client {
	h := http.Header{}
	h.Set("Accept", "application/json")
	if project != "" {
		h.Set("X-Identity-Status", "Confirmed")
		h.Set("X-Project-Id", project)
		h.Set("X-User-Id", "user-"+project)
		h.Set("X-Roles", roles)
	}
	return &client{t: t, base: base, hdr: h}
}

// withToken is a caller under --auth tokens.
func withToken(t testing.TB, base, token string) *client {
	h := http.Header{}
	h.Set("Accept", "application/json")
	if token != "" {
		h.Set("X-Auth-Token", token)
	}
	return &client{t: t, base: base, hdr: h}
}

type resp struct {
	code int
	h    http.Header
	body []byte
}

func (r *resp) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (r *resp) image(t testing.TB) api.Image {
	t.Helper()
	var img api.Image
	r.json(t, &img)
	return img
}

// message is the Glance error message of the body.
func (r *resp) message() string { return api.ErrorMessage(r.body) }

// do sends a request; body is a string, []byte, io.Reader or a value sent as JSON; extra
// are header name/value pairs.
func (c *client) do(method, path string, body any, extra ...string) *resp {
	c.t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case string:
		rd, ct = strings.NewReader(b), "application/json"
	case []byte:
		rd, ct = bytes.NewReader(b), "application/octet-stream"
	case io.Reader:
		rd, ct = b, "application/octet-stream"
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd, ct = bytes.NewReader(j), "application/json"
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header = c.hdr.Clone()
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		if extra[i+1] == "" {
			req.Header.Del(extra[i])
		} else {
			req.Header.Set(extra[i], extra[i+1])
		}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return &resp{code: res.StatusCode, h: res.Header, body: b}
}

// patch sends a Glance v2.1 JSON patch.
func (c *client) patch(id string, ops string) *resp {
	c.t.Helper()
	return c.do("PATCH", "/v2/images/"+id, ops, "Content-Type", api.PatchMediaType)
}

// create makes an image and returns it, failing the test unless it is 201.
func (c *client) create(body string) api.Image {
	c.t.Helper()
	r := c.do("POST", "/v2/images", body)
	if r.code != http.StatusCreated {
		c.t.Fatalf("create %s: %d %s", body, r.code, r.body)
	}
	return r.image(c.t)
}

// upload PUTs data, returning the response.
func (c *client) upload(id string, data []byte) *resp {
	c.t.Helper()
	return c.do("PUT", "/v2/images/"+id+"/file", data)
}

// names lists the images a GET /v2/images?query returns, by name.
func (c *client) names(query string) []string {
	c.t.Helper()
	r := c.do("GET", "/v2/images"+query, nil)
	if r.code != 200 {
		c.t.Fatalf("list %s: %d %s", query, r.code, r.body)
	}
	var out struct{ Images []api.Image }
	r.json(c.t, &out)
	names := []string{}
	for _, img := range out.Images {
		names = append(names, api.Str(img.Name))
	}
	return names
}

func expect(t testing.TB, r *resp, code int, msg string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d: %s", r.code, code, r.body)
	}
	if msg != "" && r.message() != msg {
		t.Fatalf("message %q, want %q", r.message(), msg)
	}
}

var _ = inspect.Raw
