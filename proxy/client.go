package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"glimpse/api"
)

// AdminClient talks to a proxy's admin listener (the cache API); `glimpse cache` uses it.
type AdminClient struct {
	// URL is the admin listener, e.g. http://127.0.0.1:9293.
	URL string
	// HTTP is the client to use; nil means http.DefaultClient.
	HTTP *http.Client
}

// List returns the cached and queued images.
func (a AdminClient) List(ctx context.Context) (CacheList, error) {
	var out CacheList
	b, err := a.do(ctx, http.MethodGet, "v2/cache", nil, http.StatusOK)
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	return out, err
}

// Prefetch queues image id for caching.
func (a AdminClient) Prefetch(ctx context.Context, id string) error {
	_, err := a.do(ctx, http.MethodPut, "v2/cache/"+url.PathEscape(id), nil, http.StatusAccepted)
	return err
}

// Evict removes image id from the cache and the queue.
func (a AdminClient) Evict(ctx context.Context, id string) error {
	_, err := a.do(ctx, http.MethodDelete, "v2/cache/"+url.PathEscape(id), nil, http.StatusNoContent)
	return err
}

// Clear empties the cache ("cache"), the queue ("queue"), or both ("").
func (a AdminClient) Clear(ctx context.Context, target string) error {
	h := http.Header{}
	if target != "" {
		h.Set("X-Image-Cache-Clear-Target", target)
	}
	_, err := a.do(ctx, http.MethodDelete, "v2/cache", h, http.StatusNoContent)
	return err
}

func (a AdminClient) do(ctx context.Context, method, path string, h http.Header, want int) ([]byte, error) {
	u := strings.TrimSuffix(a.URL, "/") + "/" + path
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	c := a.HTTP
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		msg := api.ErrorMessage(b)
		if msg == "" {
			msg = strings.TrimSpace(string(b))
		}
		return nil, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, msg)
	}
	return b, nil
}
