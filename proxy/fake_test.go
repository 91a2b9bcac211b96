package proxy

import (
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"glimpse/api"
)

// fakeGlance is an in-process upstream that answers like Glance for the calls the proxy
// makes: image show (404 for another project's private image), image data (with Range),
// and data upload; everything else answers 200 with the request echoed.
type fakeGlance struct {
	srv *httptest.Server

	mu     sync.Mutex
	images map[string]*fakeImage

	metaGets   atomic.Int32 // GET /v2/images/{id}
	dataGets   atomic.Int32 // whole-image GET /v2/images/{id}/file
	rangeGets  atomic.Int32
	uploads    atomic.Int32 // PUT file/stage requests that arrived
	completed  atomic.Int32 // of those, bodies read to their end
	otherCalls atomic.Int32
	lastOther  atomic.Value // *http.Request headers of the last forwarded call
}

type fakeImage struct {
	api.Image
	data     []byte
	served   []byte        // what the data endpoint sends (data unless a test mangles it)
	hold     chan struct{} // when set, whole downloads send half and wait for it to close
	truncate bool          // whole downloads announce the full length, send half, hang up

	// This image's share of uploads and completed (under fakeGlance.mu): an upstream request
	// the proxy broke off may still be arriving while a test's next upload starts.
	uploads, completed int
}

func newFakeGlance(t *testing.T) *fakeGlance {
	g := &fakeGlance{images: map[string]*fakeImage{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/images/{id}", g.show)
	mux.HandleFunc("GET /v2/images/{id}/file", g.file)
	mux.HandleFunc("HEAD /v2/images/{id}/file", g.other)
	mux.HandleFunc("PUT /v2/images/{id}/file", g.upload)
	mux.HandleFunc("PUT /v2/images/{id}/stage", g.upload)
	mux.HandleFunc("/", g.other)
	g.srv = httptest.NewServer(mux)
	t.Cleanup(g.srv.Close)
	return g
}

// add registers an active image owned by project with data.
func (g *fakeGlance) add(id, project, visibility string, data []byte) *fakeImage {
	m := md5.Sum(data)
	s := sha512.Sum512(data)
	size := int64(len(data))
	sum, hv, algo, owner := hex.EncodeToString(m[:]), hex.EncodeToString(s[:]), "sha512", project
	df, cf := "raw", "bare"
	img := &fakeImage{data: data, served: data}
	img.Image = api.Image{ID: id, Status: api.StatusActive, Visibility: visibility, Owner: &owner, Size: &size,
		Checksum: &sum, OSHashAlgo: &algo, OSHashValue: &hv, DiskFormat: &df, ContainerFormat: &cf}
	g.mu.Lock()
	g.images[id] = img
	g.mu.Unlock()
	return img
}

// addQueued registers an image without data, declared as format.
func (g *fakeGlance) addQueued(id, project, format string) {
	owner, cf := project, "bare"
	img := &fakeImage{}
	img.Image = api.Image{ID: id, Status: api.StatusQueued, Visibility: "private", Owner: &owner, DiskFormat: &format, ContainerFormat: &cf}
	g.mu.Lock()
	g.images[id] = img
	g.mu.Unlock()
}

func (g *fakeGlance) image(r *http.Request) *fakeImage {
	if r.Header.Get("X-Identity-Status") != "Confirmed" {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	img := g.images[r.PathValue("id")]
	if img == nil || (img.Visibility == "private" && api.Str(img.Owner) != r.Header.Get("X-Project-Id") && r.Header.Get("X-Roles") != "admin") {
		return nil
	}
	return img
}

func notFound(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Openstack-Request-Id", "req-fake")
	api.WriteError(w, r, http.StatusNotFound, "No image found with ID "+r.PathValue("id"))
}

func (g *fakeGlance) show(w http.ResponseWriter, r *http.Request) {
	g.metaGets.Add(1)
	img := g.image(r)
	if img == nil {
		notFound(w, r)
		return
	}
	g.mu.Lock()
	b, _ := json.Marshal(img.Image)
	g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (g *fakeGlance) file(w http.ResponseWriter, r *http.Request) {
	img := g.image(r)
	if img == nil {
		notFound(w, r)
		return
	}
	g.mu.Lock()
	data, hold, truncate, status := img.served, img.hold, img.truncate, img.Status
	g.mu.Unlock()
	if status != api.StatusActive {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Md5", api.Str(img.Checksum))
	if rg := r.Header.Get("Range"); rg != "" {
		g.rangeGets.Add(1)
		var a, b int64
		if n, _ := fmt.Sscanf(rg, "bytes=%d-%d", &a, &b); n < 1 {
			http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
			return
		} else if n == 1 {
			b = int64(len(data)) - 1
		}
		w.Header().Set("Content-Length", strconv.FormatInt(b-a+1, 10))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(data)))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[a : b+1])
		return
	}
	g.dataGets.Add(1)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if hold == nil && !truncate {
		w.Write(data)
		return
	}
	half := len(data) / 2
	w.Write(data[:half])
	w.(http.Flusher).Flush()
	if truncate {
		panic(http.ErrAbortHandler)
	}
	select {
	case <-hold:
		w.Write(data[half:])
	case <-r.Context().Done():
	}
}

func (g *fakeGlance) upload(w http.ResponseWriter, r *http.Request) {
	g.uploads.Add(1)
	img := g.image(r)
	if img == nil {
		notFound(w, r)
		return
	}
	g.mu.Lock()
	img.uploads++
	g.mu.Unlock()
	data, err := io.ReadAll(r.Body)
	if err != nil || (r.ContentLength >= 0 && int64(len(data)) != r.ContentLength) {
		return // a broken upload: the image stays queued
	}
	g.completed.Add(1)
	m := md5.Sum(data)
	s := sha512.Sum512(data)
	size := int64(len(data))
	sum, hv, algo := hex.EncodeToString(m[:]), hex.EncodeToString(s[:]), "sha512"
	g.mu.Lock()
	img.completed++
	img.data, img.served = data, data
	img.Status, img.Size, img.Checksum, img.OSHashAlgo, img.OSHashValue = api.StatusActive, &size, &sum, &algo, &hv
	g.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (g *fakeGlance) other(w http.ResponseWriter, r *http.Request) {
	g.otherCalls.Add(1)
	g.lastOther.Store(r.Header.Clone())
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Fake", "yes")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(map[string]string{"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery, "body": string(body)})
}
