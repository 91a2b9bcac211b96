package main

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"glimpse/cache"
	"glimpse/proxy"
)

func TestCacheCommand(t *testing.T) {
	g := newMiniGlance(t)
	g.put("img-a", randomData(70_000, 1), false)
	c, err := cache.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	up, _ := url.Parse(g.srv.URL)
	p, err := proxy.New(up, c)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	admin := httptest.NewServer(p.AdminHandler())
	defer admin.Close()

	if code, out, errOut := runCLI(t, "cache", "prefetch", "--admin", admin.URL, "img-a"); code != 0 || out != "queued img-a\n" {
		t.Fatalf("prefetch: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "cache", "prefetch", "--admin", admin.URL, "nope"); code != 1 || !strings.Contains(errOut, "Image nope not found.") {
		t.Fatalf("prefetch of a missing image: %d %q", code, errOut)
	}
	for !c.Contains("img-a") {
		time.Sleep(10 * time.Millisecond)
	}
	code, out, _ := runCLI(t, "cache", "list", "--admin", admin.URL)
	if code != 0 || !strings.Contains(out, "img-a") || !strings.Contains(out, "HITS") {
		t.Fatalf("list: %d %q", code, out)
	}
	code, out, _ = runCLI(t, "cache", "list", "--output=json", "--admin", admin.URL)
	var l proxy.CacheList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.CachedImages) != 1 || l.CachedImages[0].Size != 70_000 {
		t.Fatalf("list json: %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "cache", "evict", "--admin", admin.URL, "img-a"); code != 0 || out != "evicted img-a\n" || c.Contains("img-a") {
		t.Fatalf("evict: %d %q", code, out)
	}
	if code, _, errOut := runCLI(t, "cache", "evict", "--admin", admin.URL, "img-a"); code != 1 || !strings.Contains(errOut, "404") {
		t.Fatalf("second evict: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "cache", "evict", "--all", "--admin", admin.URL); code != 0 {
		t.Fatalf("evict --all: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "cache", "evict", "--all", "--target", "bogus", "--admin", admin.URL); code != 1 || !strings.Contains(errOut, "400") {
		t.Fatalf("evict --all --target bogus: %d %q", code, errOut)
	}
}
