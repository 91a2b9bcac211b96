package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"glimpse/api"
	"glimpse/cache"
)

// download answers GET /v2/images/{id}/file from the cache once the upstream has said that
// this caller may see this active image; otherwise the upstream answers.
func (p *Proxy) download(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validID(id) {
		p.rp.ServeHTTP(w, r)
		return
	}
	m, ok, err := p.authorize(r, id)
	if err != nil {
		if r.Context().Err() == nil {
			p.log.Warn("authorization check failed", "image", id, "err", err)
			api.WriteError(w, r, http.StatusBadGateway, "The upstream image service did not answer.")
		}
		return
	}
	if !ok {
		p.rp.ServeHTTP(w, r)
		return
	}
	off, n, status, msg, detail := parseRange(r, m.Size)
	h := w.Header()
	h.Set("X-Openstack-Request-Id", requestID())
	if status == http.StatusBadRequest || status == http.StatusRequestedRangeNotSatisfiable {
		api.WriteErrorDetail(w, r, status, msg, detail)
		return
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Md5", m.Checksum)
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	fetch := p.fetcher(id, forwardHeaders(r.Header))
	var written int64
	if status == http.StatusPartialContent {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, m.Size))
		w.WriteHeader(status)
		written, err = p.cache.ReadRange(r.Context(), w, m, off, n, fetch)
	} else {
		w.WriteHeader(http.StatusOK)
		written, err = p.cache.Read(r.Context(), w, m, fetch)
	}
	if err != nil {
		if r.Context().Err() == nil {
			p.log.Warn("download broken", "image", id, "written", written, "of", n, "err", err)
		}
		// Never a clean end of a short or wrong body: break the connection.
		panic(http.ErrAbortHandler)
	}
}

// authorize asks the upstream whether this caller may see image id, with the caller's own
// headers, and returns the image's metadata when it is active. A yes is kept for the auth
// TTL per caller credentials and image; a no is not kept (the caller gets the upstream's
// own answer, which the upstream gives anyway).
func (p *Proxy) authorize(r *http.Request, id string) (cache.Meta, bool, error) {
	key := credentialKey(r.Header) + "\x00" + id
	now := time.Now()
	if p.authTTL > 0 {
		if m, ok := p.decisions.get(key, now); ok {
			p.m.auth.WithLabelValues("cached").Inc()
			return m, true, nil
		}
	}
	img, resp, err := p.getImage(r.Context(), id, forwardHeaders(r.Header))
	if err != nil {
		p.m.auth.WithLabelValues("error").Inc()
		return cache.Meta{}, false, err
	}
	if resp != nil {
		resp.Body.Close()
		p.m.auth.WithLabelValues("denied").Inc()
		return cache.Meta{}, false, nil
	}
	if img.Status != api.StatusActive || img.Size == nil || img.Checksum == nil || img.ID != id {
		p.m.auth.WithLabelValues("inactive").Inc()
		return cache.Meta{}, false, nil
	}
	m := cache.Meta{ID: id, Size: *img.Size, Checksum: api.Str(img.Checksum), HashAlgo: api.Str(img.OSHashAlgo), HashValue: api.Str(img.OSHashValue)}
	p.m.auth.WithLabelValues("allowed").Inc()
	if p.authTTL > 0 {
		p.decisions.put(key, m, now.Add(p.authTTL))
	}
	return m, true, nil
}

// notCredentials are request headers that do not change who the caller is. Every other
// header (X-Auth-Token, Authorization, X-Project-Id, X-Roles, Cookie, and any header not
// known here) is part of the credentials a decision is kept for: an unknown header can only
// split the cache of decisions, never share one between callers.
var notCredentials = map[string]bool{
	"Accept": true, "Accept-Encoding": true, "Accept-Language": true, "User-Agent": true,
	"Range": true, "If-Range": true, "If-Match": true, "If-None-Match": true, "If-Modified-Since": true,
	"If-Unmodified-Since": true, "Cache-Control": true, "Pragma": true, "Connection": true, "Keep-Alive": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Proxy-Connection": true,
	"Content-Length": true, "Content-Type": true, "Content-Range": true, "Via": true,
	"X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true, "X-Real-Ip": true,
	"X-Openstack-Request-Id": true, "X-Request-Id": true, "Traceparent": true, "Tracestate": true,
}

// credentialKey is a digest of the caller's credentials.
func credentialKey(h http.Header) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		if !notCredentials[http.CanonicalHeaderKey(k)] {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	d := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(d, "%s\x00%d\x00", http.CanonicalHeaderKey(k), len(h[k]))
		for _, v := range h[k] {
			fmt.Fprintf(d, "%d:%s\x00", len(v), v)
		}
	}
	return hex.EncodeToString(d.Sum(nil))
}

// parseRange reads a Range header (or Glance's legacy Content-Range request header) as
// Glance does: one range of bytes; several ranges are a 400, a range Glance cannot serve a
// 416 with its message. It returns the offset, the length and 200 or 206, or the error's
// status, message and detail.
func parseRange(r *http.Request, size int64) (off, n int64, status int, msg, detail string) {
	const notAvailable = "The Range requested is not available."
	spec := r.Header.Get("Range")
	legacy := false
	if spec == "" {
		if spec = r.Header.Get("Content-Range"); spec == "" {
			return 0, size, http.StatusOK, "", ""
		}
		legacy = true
	}
	invalid := func() (int64, int64, int, string, string) {
		return 0, 0, http.StatusRequestedRangeNotSatisfiable, notAvailable, "Invalid Range header."
	}
	var first, last int64
	if legacy {
		// "bytes 1-2/100" or "bytes 1-2/*"
		s, ok := strings.CutPrefix(spec, "bytes ")
		if !ok {
			return invalid()
		}
		s, _, _ = strings.Cut(s, "/")
		a, b, ok := strings.Cut(s, "-")
		var err1, err2 error
		first, err1 = strconv.ParseInt(strings.TrimSpace(a), 10, 64)
		last, err2 = strconv.ParseInt(strings.TrimSpace(b), 10, 64)
		if !ok || err1 != nil || err2 != nil || first < 0 || last < first {
			return invalid()
		}
	} else {
		s, ok := strings.CutPrefix(strings.TrimSpace(spec), "bytes=")
		if !ok {
			return invalid()
		}
		if strings.Contains(s, ",") {
			return 0, 0, http.StatusBadRequest, "Requests with multiple ranges are not supported in Glance. You may make multiple single-range requests instead.", ""
		}
		a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
		if !ok {
			return invalid()
		}
		a, b = strings.TrimSpace(a), strings.TrimSpace(b)
		switch {
		case a == "": // the last b bytes
			k, err := strconv.ParseInt(b, 10, 64)
			if err != nil || k <= 0 {
				return invalid()
			}
			if size == 0 {
				return 0, 0, http.StatusRequestedRangeNotSatisfiable, notAvailable, "Invalid Range header."
			}
			first, last = max(size-k, 0), size-1
		default:
			var err error
			if first, err = strconv.ParseInt(a, 10, 64); err != nil || first < 0 {
				return invalid()
			}
			last = size - 1
			if b != "" {
				if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
					return invalid()
				}
			}
		}
	}
	if first >= size {
		return 0, 0, http.StatusRequestedRangeNotSatisfiable, notAvailable,
			fmt.Sprintf("Invalid start position in Range header. Start position MUST be in the inclusive range [0, %d].", size-1)
	}
	last = min(last, size-1)
	return first, last - first + 1, http.StatusPartialContent, "", ""
}

// fetcher reads image id's data from the upstream with the given headers (the caller's,
// or the service's for a prefetch).
func (p *Proxy) fetcher(id string, h http.Header) cache.Fetcher {
	return func(ctx context.Context, off, n int64) (io.ReadCloser, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.imageURL(id, "file"), nil)
		if err != nil {
			return nil, err
		}
		req.Header = h.Clone()
		ranged := off > 0 || n >= 0
		if ranged {
			if n >= 0 {
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
			} else {
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
			}
		}
		resp, err := p.client.Do(req)
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			if off > 0 { // a server that ignores Range: skip to the offset
				if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
					resp.Body.Close()
					return nil, fmt.Errorf("image %s from the upstream: skipping to %d: %w", id, off, err)
				}
			}
			return resp.Body, nil
		case resp.StatusCode == http.StatusPartialContent && ranged:
			var a int64
			if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &a); err != nil || a != off {
				resp.Body.Close()
				return nil, fmt.Errorf("image %s from the upstream: asked for bytes from %d, got %q", id, off, resp.Header.Get("Content-Range"))
			}
			return resp.Body, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		msg := api.ErrorMessage(body)
		if msg == "" {
			msg = strings.TrimSpace(string(body))
		}
		return nil, fmt.Errorf("image %s from the upstream: %s: %s", id, resp.Status, msg)
	}
}
