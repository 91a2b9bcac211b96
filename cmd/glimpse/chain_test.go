package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// TestProxyChainedToStore runs glimpse's proxy with glimpse's own store as its upstream,
// and a second proxy in front of the first: each serves the API it consumes.
func TestProxyChainedToStore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the glimpse binary")
	}
	bin := buildGlimpse(t)
	store := startServe(t, bin, "glimpse store serving the Image API v2", "--data-dir", t.TempDir(), "--auth", "none")
	p1 := startProxy(t, bin, "--upstream", store.url, "--cache-dir", t.TempDir(), "--cache-size", "64M")
	p2 := startProxy(t, bin, "--upstream", p1.url, "--cache-dir", t.TempDir(), "--cache-size", "64M")

	req, _ := http.NewRequest("POST", p2.url+"/v2/images", strings.NewReader(`{"name": "chained", "disk_format": "raw", "container_format": "bare"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var img struct{ ID string }
	if resp.StatusCode != 201 || json.Unmarshal(body, &img) != nil || img.ID == "" {
		t.Fatalf("create through two proxies: %d %s", resp.StatusCode, body)
	}
	data := randomData(2<<20+9, 7)
	req, _ = http.NewRequest("PUT", p2.url+"/v2/images/"+img.ID+"/file", bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("upload through two proxies: %v %v", resp, err)
	}
	for _, p := range []*glimpseProc{p2, p2, p1} {
		if b, err := download(p.url + "/v2/images/" + img.ID + "/file"); err != nil || !bytes.Equal(b, data) {
			t.Fatalf("download from %s: %v", p.url, err)
		}
	}
	// p2: a miss then a hit; p1: filled once by p2's miss, then a hit.
	if h := hits(t, p2.url); h != "1" {
		t.Fatalf("outer proxy: %v hits, want 1", h)
	}
	if h := hits(t, p1.url); h != "1" {
		t.Fatalf("inner proxy: %v hits, want 1", h)
	}
}

func hits(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^glimpse_cache_requests_total\{result="hit"\} (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no hit counter in %s/metrics", base)
	}
	return string(m[1])
}
