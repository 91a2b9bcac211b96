// Package store is glimpse's embedded image service: the OpenStack Image API v2 as Glance
// (Zed) serves it, with metadata in SQLite (modernc.org/sqlite, WAL) and image data as
// files, for a machine that has no Glance to cache. Every upload is inspected as it
// streams (inspect.NewStream under the operator's inspect.Policy) and is refused, leaving
// the image queued and keeping nothing, when its content is not what it claims or is
// unsafe.
//
// Layout of the data directory:
//
//	glimpse.db, glimpse.db-wal, glimpse.db-shm   metadata
//	images/<id>                                  the data of each active image
//	images/.tmp/                                 uploads in progress
//
// An upload is written to images/.tmp, fsynced, renamed to images/<id> (and the directory
// fsynced) before the transaction that makes the image active commits; deleting commits
// first and removes the file after. New recovers from a crash at any point: an image left
// saving is queued again, and files that no committed active image owns are removed.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"glimpse/api"
	"glimpse/inspect"
)

// Config configures a Store. DataDir is required; every other field has a default.
type Config struct {
	// DataDir holds the database and the image data; it is created when missing.
	DataDir string
	// Auth says who callers are. Default: AuthNone (every caller is an admin).
	Auth Authenticator
	// Policy is what uploads must satisfy beyond safety (formats, virtual size). Default:
	// the zero Policy (any safe image).
	Policy inspect.Policy
	// MaxImageSize, when above zero, refuses uploads of more bytes (413, as Glance's
	// image_size_cap). Default: no limit.
	MaxImageSize int64
	// Logger receives the server's log. Default: discard.
	Logger *slog.Logger
	// Registry receives the store's metrics; /metrics serves what it gathers when it is
	// also a prometheus.Gatherer. Default: a new registry of its own.
	Registry prometheus.Registerer
}

// Store is the image service. Its Handler serves the API; Close releases the database.
type Store struct {
	dataDir, imgDir, tmpDir string
	w, r                    *sql.DB
	auth                    Authenticator
	policy                  inspect.Policy
	maxSize                 int64
	log                     *slog.Logger
	m                       *metrics
	gatherer                prometheus.Gatherer
	handler                 http.Handler
}

// New opens (or creates) the store in cfg.DataDir and recovers from an unclean stop.
func New(cfg Config) (*Store, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("store: no data directory")
	}
	if cfg.MaxImageSize < 0 {
		return nil, fmt.Errorf("store: negative maximum image size %d", cfg.MaxImageSize)
	}
	s := &Store{
		dataDir: cfg.DataDir,
		imgDir:  filepath.Join(cfg.DataDir, "images"),
		tmpDir:  filepath.Join(cfg.DataDir, "images", ".tmp"),
		auth:    cfg.Auth,
		policy:  cfg.Policy,
		maxSize: cfg.MaxImageSize,
		log:     cfg.Logger,
	}
	if s.auth == nil {
		s.auth = AuthNone{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	reg := cfg.Registry
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, s.gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		s.gatherer = g
	}
	if err := os.MkdirAll(s.tmpDir, 0o750); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var err error
	if s.w, s.r, err = openDB(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := s.recover(context.Background()); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: recovering %s: %w", cfg.DataDir, err)
	}
	if s.m, err = newMetrics(reg, s.countImages); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: metrics: %w", err)
	}
	s.handler = s.routes()
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	var errs []error
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	return errors.Join(errs...)
}

// Handler serves the Image API, /healthcheck and /metrics.
func (s *Store) Handler() http.Handler { return s.handler }

func (s *Store) dataPath(id string) string { return filepath.Join(s.imgDir, id) }

// recover puts the store back into a consistent state after a crash: uploads that never
// committed are forgotten (their images queued again, their files removed), and files of
// images whose deletion committed are removed.
func (s *Store) recover(ctx context.Context) error {
	res, err := s.w.ExecContext(ctx, `UPDATE images SET status = ?, updated_at = ? WHERE status = ?`,
		api.StatusQueued, now(), api.StatusSaving)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n > 0 {
		s.log.Warn("images left saving by an unclean stop are queued again", "count", n)
	}
	tmps, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return err
	}
	for _, e := range tmps {
		if err := os.Remove(filepath.Join(s.tmpDir, e.Name())); err != nil {
			return err
		}
		s.log.Warn("removed an unfinished upload", "file", e.Name())
	}
	keep := map[string]bool{}
	rows, err := s.w.QueryContext(ctx, `SELECT id FROM images WHERE size IS NOT NULL AND status IN (?, ?)`,
		api.StatusActive, api.StatusDeactivated)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		keep[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	files, err := os.ReadDir(s.imgDir)
	if err != nil {
		return err
	}
	for _, e := range files {
		if e.Name() == ".tmp" {
			continue
		}
		if keep[e.Name()] {
			delete(keep, e.Name())
			continue
		}
		if err := os.Remove(filepath.Join(s.imgDir, e.Name())); err != nil {
			return err
		}
		s.log.Warn("removed data no active image owns (an upload or a delete cut short)", "file", e.Name())
	}
	for id := range keep {
		s.log.Error("active image has no data file", "image", id, "file", s.dataPath(id))
	}
	return syncDir(s.imgDir)
}

func (s *Store) countImages() map[string]float64 {
	out := map[string]float64{}
	rows, err := s.r.Query("SELECT status, count(*) FROM images GROUP BY status")
	if err != nil {
		return out
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n float64
		if rows.Scan(&st, &n) == nil {
			out[st] = n
		}
	}
	return out
}

// syncDir fsyncs a directory, so that a rename or removal in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// handlerFunc is an API handler: it writes a response or returns an error, which is
// written as Glance's error body (*api.APIError) or a 500.
type handlerFunc func(w http.ResponseWriter, r *http.Request, c Caller) error

// routes builds the mux: every route has a name for the metrics and says whether it needs
// an authenticated caller.
func (s *Store) routes() http.Handler {
	mux := http.NewServeMux()
	add := func(pattern, name string, auth bool, h handlerFunc) {
		s.m.initRoute(name)
		mux.Handle(pattern, s.wrap(name, auth, h))
	}
	versions := func(w http.ResponseWriter, r *http.Request, _ Caller) error {
		api.WriteVersions(w, api.BaseURL(r))
		return nil
	}
	add("GET /{$}", "versions", false, versions)
	add("GET /versions", "versions", false, versions)
	add("GET /healthcheck", "healthcheck", false, s.healthcheck)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))

	add("GET /v2/schemas/{name}", "schemas", true, func(w http.ResponseWriter, r *http.Request, _ Caller) error {
		api.WriteSchema(w, r, r.PathValue("name"))
		return nil
	})
	add("GET /v2/images", "images.list", true, s.listImages)
	add("POST /v2/images", "images.create", true, s.createImage)
	add("GET /v2/images/{id}", "images.show", true, s.showImage)
	add("PATCH /v2/images/{id}", "images.update", true, s.updateImage)
	add("DELETE /v2/images/{id}", "images.delete", true, s.deleteImage)
	add("PUT /v2/images/{id}/file", "images.upload", true, s.upload)
	add("GET /v2/images/{id}/file", "images.download", true, s.download)
	add("HEAD /v2/images/{id}/file", "images.download", true, methodNotAllowed("GET, PUT"))
	add("PUT /v2/images/{id}/stage", "images.stage", true, s.stage)
	add("POST /v2/images/{id}/import", "images.import", true, s.importImage)
	add("GET /v2/info/import", "info.import", true, s.importInfo)
	add("PUT /v2/images/{id}/tags/{tag}", "tags.add", true, s.addTag)
	add("DELETE /v2/images/{id}/tags/{tag}", "tags.delete", true, s.deleteTag)
	add("GET /v2/images/{id}/members", "members.list", true, s.listMembers)
	add("POST /v2/images/{id}/members", "members.create", true, s.createMember)
	add("GET /v2/images/{id}/members/{member}", "members.show", true, s.showMember)
	add("PUT /v2/images/{id}/members/{member}", "members.update", true, s.updateMember)
	add("DELETE /v2/images/{id}/members/{member}", "members.delete", true, s.deleteMember)
	add("POST /v2/images/{id}/actions/deactivate", "images.deactivate", true, s.deactivate)
	add("POST /v2/images/{id}/actions/reactivate", "images.reactivate", true, s.reactivate)
	s.m.initRoute("unknown")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			s.notRouted(mux, w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// notRouted answers what the mux does not route, in Glance's words: 404 for an unknown
// path (401 first under /v2 for an unknown caller), 405 with Allow for a known path and
// another method.
func (s *Store) notRouted(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &probeWriter{h: http.Header{}}
	h, _ := mux.Handler(r)
	h.ServeHTTP(rec, r)
	sw := &statusWriter{ResponseWriter: w}
	defer func() { s.m.observe("unknown", r.Method, sw.code(), time.Since(start), 0) }()
	if strings.HasPrefix(r.URL.Path, "/v2/") {
		if _, ok := s.auth.Authenticate(r); !ok {
			writeUnauthorized(sw, r)
			return
		}
	}
	if rec.status == http.StatusMethodNotAllowed {
		sw.Header().Set("Allow", rec.h.Get("Allow"))
		sw.Header().Set("Content-Type", "text/html; charset=UTF-8")
		sw.Header().Set("Content-Length", "0")
		sw.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	api.WriteError(sw, r, http.StatusNotFound, "The resource could not be found.")
}

type probeWriter struct {
	h      http.Header
	status int
}

func (p *probeWriter) Header() http.Header         { return p.h }
func (p *probeWriter) Write(b []byte) (int, error) { return len(b), nil }
func (p *probeWriter) WriteHeader(code int)        { p.status = code }

func methodNotAllowed(allow string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, _ Caller) error {
		w.Header().Set("Allow", allow)
		w.Header().Set("Content-Type", "text/html; charset=UTF-8")
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return nil
	}
}

func writeUnauthorized(w http.ResponseWriter, r *http.Request) {
	api.WriteError(w, r, http.StatusUnauthorized, "This server could not verify that you are authorized to access the document you requested. Either you supplied the wrong credentials (e.g., bad password), or your browser does not understand how to supply the credentials required.")
}

// wrap adds authentication, the error envelope, logging and metrics to a handler.
func (s *Store) wrap(name string, auth bool, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			s.m.observe(name, r.Method, sw.code(), time.Since(start), sw.n)
			s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.code(),
				"bytes", sw.n, "duration", time.Since(start))
		}()
		var c Caller
		if auth {
			var ok bool
			if c, ok = s.auth.Authenticate(r); !ok {
				writeUnauthorized(sw, r)
				return
			}
		}
		err := h(sw, r, c)
		if err == nil {
			return
		}
		var ae *api.APIError
		if errors.As(err, &ae) {
			if !sw.wrote {
				api.WriteErr(sw, r, ae)
			}
			return
		}
		if errors.Is(err, context.Canceled) {
			s.log.Info("request cancelled", "method", r.Method, "path", r.URL.Path, "err", err)
		} else {
			s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		if !sw.wrote {
			api.WriteError(sw, r, http.StatusInternalServerError, "The server has either erred or is incapable of performing the requested operation.")
		}
	})
}

// statusWriter records the status and the bytes of a response. It has no io.ReaderFrom:
// nothing in the store hands it a file for sendfile (downloads copy through a buffer, see
// sendData).
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
	n      int64
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status, w.wrote = http.StatusOK, true
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() int {
	if !w.wrote {
		return http.StatusOK
	}
	return w.status
}

// healthcheck answers as Glance's healthcheck middleware does: 200 "OK" as text, or 503
// when the database does not answer.
func (s *Store) healthcheck(w http.ResponseWriter, r *http.Request, _ Caller) error {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
	if err := s.r.PingContext(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "database unavailable")
		return nil
	}
	io.WriteString(w, "OK")
	return nil
}
