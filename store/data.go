package store

import (
	"context"
	"crypto/md5"
	"crypto/sha512"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"glimpse/api"
	"glimpse/inspect"
	"glimpse/internal/writeback"
)

// uploadChunk is the unit an upload is read, hashed and written in; hashPiece is what a
// hash is given at once.
const (
	uploadChunk   = 1 << 20
	uploadBuffers = 8 // per upload in progress: 8 MiB
	hashPiece     = 64 << 10
)

// inspectFormat is the format an upload is inspected as: the declared disk_format, or OVA
// for an ova container. Formats inspect does not know (ami, aki, ari are raw kernels and
// disks; ploop) are inspected as raw or by probing.
func inspectFormat(diskFormat, containerFormat string) inspect.Format {
	if containerFormat == "ova" {
		return inspect.OVA
	}
	switch diskFormat {
	case "ami", "aki", "ari":
		return inspect.Raw
	}
	if f, err := inspect.ParseFormat(diskFormat); err == nil {
		return f
	}
	return "" // probe
}

func (s *Store) upload(w http.ResponseWriter, r *http.Request, c Caller) error {
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	if ct = strings.TrimSpace(ct); ct != "application/octet-stream" {
		if ct == "" {
			ct = "None"
		}
		return api.UnsupportedMediaType(ct)
	}
	ctx := r.Context()
	id := r.PathValue("id")
	var rec *record
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		rec, err = s.lookup(ctx, tx, c, id)
		if errors.Is(err, errNoImage) {
			return notFound(id)
		}
		if err != nil {
			return err
		}
		if !isOwner(c, rec) {
			return api.Errorf(http.StatusForbidden, "Not allowed to upload image data for image %s", id)
		}
		if rec.Status != api.StatusQueued {
			return api.Errorf(http.StatusConflict, "Image status transition from %s to saving is not allowed", rec.Status)
		}
		switch {
		case !rec.DiskFormat.Valid && !rec.ContainerFormat.Valid:
			return api.Errorf(http.StatusBadRequest, "Properties disk_format, container_format must be set prior to saving data.")
		case !rec.DiskFormat.Valid:
			return api.Errorf(http.StatusBadRequest, "Property disk_format must be set prior to saving data.")
		case !rec.ContainerFormat.Valid:
			return api.Errorf(http.StatusBadRequest, "Property container_format must be set prior to saving data.")
		}
		_, err = tx.ExecContext(ctx, "UPDATE images SET status = ?, updated_at = ? WHERE id = ?", api.StatusSaving, now(), id)
		return err
	})
	if err != nil {
		return err
	}
	res, err := s.receive(ctx, rec, r.Body)
	if err != nil {
		// Not kept: the image is queued again and the data is gone.
		s.requeue(id)
		var ae *api.APIError
		if errors.As(err, &ae) {
			if ae.Status == http.StatusBadRequest {
				s.m.uploads.WithLabelValues(uploadRefused).Inc()
			} else {
				s.m.uploads.WithLabelValues(uploadFailed).Inc()
			}
			s.log.Warn("upload refused", "image", id, "user", c.User, "status", ae.Status, "reason", ae.Message)
			w.Header().Set("Connection", "close")
		} else {
			s.m.uploads.WithLabelValues(uploadFailed).Inc()
		}
		return err
	}
	// The data is durable under its final name: commit the image as active.
	var n int64
	err = s.inTx(context.WithoutCancel(ctx), func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, `UPDATE images SET status = ?, checksum = ?, os_hash_algo = ?, os_hash_value = ?,
			size = ?, virtual_size = ?, updated_at = ? WHERE id = ? AND status = ?`,
			api.StatusActive, res.md5, "sha512", res.sha512, res.size, res.virtualSize, now(), id, api.StatusSaving)
		if err != nil {
			return err
		}
		n, err = r.RowsAffected()
		return err
	})
	if err != nil || n == 0 {
		os.Remove(s.dataPath(id))
		syncDir(s.imgDir)
		s.m.uploads.WithLabelValues(uploadFailed).Inc()
		if err != nil {
			return err
		}
		return api.Errorf(http.StatusGone, "Image %s could not be found after upload. The image may have been deleted during the upload.", id)
	}
	s.m.uploads.WithLabelValues(uploadActive).Inc()
	s.log.Info("image uploaded", "image", id, "user", c.User, "size", res.size, "virtual_size", res.virtualSize,
		"format", res.format, "checksum", res.md5, "fsync", res.syncTime)
	w.Header().Set("Content-Type", "text/html; charset=UTF-8")
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// requeue returns an image whose upload failed to queued (if nothing else changed it).
func (s *Store) requeue(id string) {
	_, err := s.w.Exec("UPDATE images SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
		api.StatusQueued, now(), id, api.StatusSaving)
	if err != nil {
		s.log.Error("requeueing an image after a failed upload", "image", id, "err", err)
	}
}

type received struct {
	size, virtualSize int64
	md5, sha512       string
	format            inspect.Format
	syncTime          time.Duration // spent in the final fsync
}

// receive streams an upload into a temporary file, hashing it (MD5 and SHA-512 each on a
// goroutine of its own, overlapping with the next read) and inspecting it; on success the
// file is fsynced and renamed to the image's data path. On any failure nothing is left.
func (s *Store) receive(ctx context.Context, rec *record, body io.Reader) (*received, error) {
	declared := inspectFormat(rec.DiskFormat.String, rec.ContainerFormat.String)
	maxVirtual := s.policy.MaxVirtualSize
	stream := inspect.NewStream(inspect.OpenOptions{Name: rec.ID, Format: declared, MaxVirtualSize: maxVirtual})
	f, err := os.CreateTemp(s.tmpDir, rec.ID+".*")
	if err != nil {
		return nil, err
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(tmp)
		}
	}()

	// Chunks flow through a ring of uploadBuffers buffers: the MD5 and SHA-512 goroutines
	// each work through the queue at their own pace while this one reads the next chunks,
	// writes them and inspects them; a buffer is reused once both hashes have taken it.
	// Two buffers kept every goroutine waiting for the slowest at every chunk.
	hashers := [2]*hashWorker{newHashWorker(md5.New()), newHashWorker(sha512.New())}
	free := make(chan *upBuf, uploadBuffers)
	for range uploadBuffers {
		// Aligned: writes bypass the page cache (see writeback.Direct); the data is fsynced
		// before the image turns active, and copying it into the page cache first cost as
		// much CPU as its MD5.
		free <- &upBuf{b: writeback.AlignedBuffer(uploadChunk), free: free}
	}
	defer func() {
		for _, h := range hashers {
			h.stop()
		}
	}()
	out := writeback.NewDirect(f)
	var size int64
	pacer := writeback.NewPacer(f)
	for {
		ub := <-free
		n, rerr := io.ReadFull(body, ub.b)
		if n > 0 {
			chunk := ub.b[:n]
			ub.n = n
			ub.pending.Store(int32(len(hashers)))
			for _, h := range hashers {
				h.in <- ub
			}
			size += int64(n)
			s.m.uploadBytes.Add(float64(n))
			if s.maxSize > 0 && size > s.maxSize {
				stream.Abort()
				return nil, api.Errorf(http.StatusRequestEntityTooLarge, "The incoming image is too large: more than the limit of %d bytes.", s.maxSize)
			}
			if _, err := out.Write(chunk); err != nil {
				stream.Abort()
				return nil, fmt.Errorf("writing %s: %w", tmp, err)
			}
			pacer.Written(size) // so that the final fsync is short
			if _, err := stream.Write(chunk); err != nil {
				// Decided before the end: stop reading.
				return nil, refusal(s.policy, stream.Abort())
			}
		} else {
			free <- ub
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			stream.Abort()
			return nil, fmt.Errorf("reading the upload of %s: %w", rec.ID, rerr)
		}
	}
	for _, h := range hashers {
		h.stop() // waits for the queue to drain
	}
	verdict := stream.Close()
	if e := refusal(s.policy, verdict); e != nil {
		return nil, e
	}
	syncStart := time.Now()
	if err := f.Sync(); err != nil {
		return nil, err
	}
	syncTime := time.Since(syncStart)
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, s.dataPath(rec.ID)); err != nil {
		return nil, err
	}
	committed = true
	if err := syncDir(s.imgDir); err != nil {
		os.Remove(s.dataPath(rec.ID))
		return nil, err
	}
	vsize := verdict.VirtualSize
	if vsize == 0 && (verdict.Format == inspect.Raw || verdict.Format == inspect.ISO) {
		vsize = size
	}
	return &received{
		size: size, virtualSize: vsize, format: verdict.Format, syncTime: syncTime,
		md5: hex.EncodeToString(hashers[0].sum()), sha512: hex.EncodeToString(hashers[1].sum()),
	}, nil
}

// refusal is the 400 for a verdict the policy refuses (nil when it is accepted).
func refusal(p inspect.Policy, v inspect.Verdict) *api.APIError {
	findings := p.Judge(v)
	if len(findings) == 0 {
		return nil
	}
	parts := make([]string, len(findings))
	for i, f := range findings {
		parts[i] = f.String()
	}
	return api.Errorf(http.StatusBadRequest, "Image data refused by inspection: %s", strings.Join(parts, "; "))
}

// upBuf is one buffer of an upload's ring; the hashers hand it back to free when both are
// done with it.
type upBuf struct {
	b       []byte
	n       int // bytes of b in use
	free    chan<- *upBuf
	pending atomic.Int32
}

func (u *upBuf) release() {
	if u.pending.Add(-1) == 0 {
		u.free <- u // never blocks: free has room for every buffer
	}
}

// hashWorker hashes the chunks queued to it on a goroutine of its own.
type hashWorker struct {
	h    hash.Hash
	in   chan *upBuf
	done chan struct{}
	once sync.Once
}

func newHashWorker(h hash.Hash) *hashWorker {
	w := &hashWorker{h: h, in: make(chan *upBuf, uploadBuffers), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for u := range w.in {
			// In pieces: the hashes' assembly cannot be preempted, and a goroutine
			// hashing a whole chunk in one call makes every GC spin waiting for it.
			for b := u.b[:u.n]; len(b) > 0; {
				n := min(len(b), hashPiece)
				w.h.Write(b[:n])
				b = b[n:]
			}
			u.release()
		}
	}()
	return w
}

func (w *hashWorker) sum() []byte { return w.h.Sum(nil) }

// stop closes the queue and waits until everything queued has been hashed.
func (w *hashWorker) stop() {
	w.once.Do(func() {
		close(w.in)
		<-w.done
	})
}

func (s *Store) download(w http.ResponseWriter, r *http.Request, c Caller) error {
	id := r.PathValue("id")
	rec, err := s.lookup(r.Context(), s.r, c, id)
	if errors.Is(err, errNoImage) {
		return notFound(id)
	}
	if err != nil {
		return err
	}
	if rec.Status == api.StatusDeactivated && !c.Admin {
		return api.Errorf(http.StatusForbidden, "The requested image has been deactivated. Image data download is forbidden.")
	}
	if (rec.Status != api.StatusActive && rec.Status != api.StatusDeactivated) || !rec.Size.Valid {
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	f, err := os.Open(s.dataPath(id))
	if err != nil {
		return fmt.Errorf("image %s is %s but its data cannot be read: %w", id, rec.Status, err)
	}
	defer f.Close()
	size := rec.Size.Int64
	start, length, partial, aerr := parseRange(r.Header.Get("Range"), size)
	if aerr != nil {
		return aerr
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	if rec.Checksum.Valid {
		h.Set("Content-MD5", rec.Checksum.String)
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	status := http.StatusOK
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return err
	}
	n, err := sendData(w, f, length)
	s.m.downloadBytes.Add(float64(n))
	if err != nil {
		return fmt.Errorf("sending image %s: %w", id, err)
	}
	return nil
}

// parseRange reads a Range header as Glance does: one range of bytes; several ranges are
// 400; anything malformed, or a start past the end, is 416.
func parseRange(h string, size int64) (start, length int64, partial bool, e *api.APIError) {
	if h == "" {
		return 0, size, false, nil
	}
	invalid := &api.APIError{Status: http.StatusRequestedRangeNotSatisfiable, Message: "The Range requested is not available.", Detail: "Invalid Range header."}
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok {
		return 0, 0, false, invalid
	}
	if strings.Contains(spec, ",") {
		return 0, 0, false, api.Errorf(http.StatusBadRequest, "Requests with multiple ranges are not supported in Glance. You may make multiple single-range requests instead.")
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false, invalid
	}
	num := func(s string) (int64, bool) {
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil && n >= 0
	}
	switch {
	case a == "" && b == "":
		return 0, 0, false, invalid
	case a == "":
		n, ok := num(b)
		if !ok || n == 0 {
			return 0, 0, false, invalid
		}
		n = min(n, size)
		return size - n, n, true, nil
	}
	first, ok := num(a)
	if !ok {
		return 0, 0, false, invalid
	}
	last := size - 1
	if b != "" {
		if last, ok = num(b); !ok || last < first {
			return 0, 0, false, invalid
		}
	}
	if first >= size {
		return 0, 0, false, &api.APIError{Status: http.StatusRequestedRangeNotSatisfiable, Message: "The Range requested is not available.",
			Detail: fmt.Sprintf("Invalid start position in Range header. Start position MUST be in the inclusive range [0, %d].", size-1)}
	}
	last = min(last, size-1)
	return first, last - first + 1, true, nil
}

// Interoperable import (glance-direct, web-download, copy-image) is not offered: the
// discovery call says so, and the calls answer as a Glance with no import method enabled.
func (s *Store) importInfo(w http.ResponseWriter, r *http.Request, _ Caller) error {
	return writeJSON(w, http.StatusOK, map[string]any{"import-methods": map[string]any{
		"description": "Import methods available.", "type": "array", "value": []string{},
	}})
}

func (s *Store) stage(w http.ResponseWriter, r *http.Request, c Caller) error {
	return api.Errorf(http.StatusNotFound, "The resource could not be found.")
}

func (s *Store) importImage(w http.ResponseWriter, r *http.Request, c Caller) error {
	id := r.PathValue("id")
	if _, err := s.lookup(r.Context(), s.r, c, id); errors.Is(err, errNoImage) {
		return notFound(id)
	} else if err != nil {
		return err
	}
	return api.Errorf(http.StatusBadRequest, "Import method is not enabled: this server takes image data with PUT /v2/images/%s/file.", id)
}

// downloadBuffers are the buffers downloads are copied through.
var downloadBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// sendData copies n bytes of f to w through a 256 KiB buffer, read(2) and write(2), rather
// than handing the file to the connection for sendfile(2). Measured on loopback with curl
// (scripts/bench-store.sh, 1 GiB from the page cache): sendfile took 0.74-0.77 s for one
// client and 5.8-6.0 s for eight, the buffered copy 0.45-0.63 s and 4.4-4.9 s: sendfile
// returns EAGAIN about every other call there and parks the goroutine each time, and the
// copy it saves is cheap next to that.
func sendData(w io.Writer, f *os.File, n int64) (int64, error) {
	bp := downloadBuffers.Get().(*[]byte)
	defer downloadBuffers.Put(bp)
	// The anonymous structs hide io.ReaderFrom and io.WriterTo, which would pick sendfile.
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{io.LimitReader(f, n)}, *bp)
}
