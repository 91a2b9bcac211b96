package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"

	"glimpse/api"
)

// maxJSONBody bounds the JSON bodies the API reads (Glance's own limit is similar).
const maxJSONBody = 1 << 20

// toAPI is the image as the API shows it.
func (r *record) toAPI() api.Image {
	img := api.Image{
		ID:              r.ID,
		Name:            nullStr(r.Name),
		Status:          r.Status,
		Visibility:      r.Visibility,
		Protected:       r.Protected,
		OSHidden:        r.OSHidden,
		Owner:           nullStr(r.Owner),
		Checksum:        nullStr(r.Checksum),
		OSHashAlgo:      nullStr(r.OSHashAlgo),
		OSHashValue:     nullStr(r.OSHashValue),
		Size:            nullInt(r.Size),
		VirtualSize:     nullInt(r.VirtualSize),
		MinRAM:          r.MinRAM,
		MinDisk:         r.MinDisk,
		DiskFormat:      nullStr(r.DiskFormat),
		ContainerFormat: nullStr(r.ContainerFormat),
		CreatedAt:       r.CreatedAt,
		UpdatedAt:       r.UpdatedAt,
		Tags:            r.Tags,
		Self:            "/v2/images/" + r.ID,
		File:            "/v2/images/" + r.ID + "/file",
		Schema:          "/v2/schemas/image",
	}
	if img.Tags == nil {
		img.Tags = []string{}
	}
	if len(r.Properties) > 0 {
		img.Properties = make(map[string]json.RawMessage, len(r.Properties))
		for k, v := range r.Properties {
			b, _ := json.Marshal(v)
			img.Properties[k] = b
		}
	}
	return img
}

func nullStr(s sql.NullString) *string {
	if !s.Valid {
		return nil
	}
	v := s.String
	return &v
}

func nullInt(n sql.NullInt64) *int64 {
	if !n.Valid {
		return nil
	}
	v := n.Int64
	return &v
}

func str(s string) sql.NullString { return sql.NullString{String: s, Valid: true} }

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	_, err = w.Write(b)
	return err
}

// readJSONObject reads a JSON object body, keeping the order of its keys (Glance reports
// the first offending key in body order).
func readJSONObject(r *http.Request) (map[string]json.RawMessage, []string, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBody+1))
	if err != nil {
		return nil, nil, err
	}
	if len(body) > maxJSONBody {
		return nil, nil, api.Errorf(http.StatusRequestEntityTooLarge, "Request body is larger than %d bytes.", maxJSONBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, api.Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		var v any
		if json.Unmarshal(body, &v) != nil {
			return nil, nil, api.Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
		}
		return nil, nil, errNotObject
	}
	m := map[string]json.RawMessage{}
	var keys []string
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, nil, api.Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
		}
		k := kt.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, api.Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
		}
		if _, dup := m[k]; !dup {
			keys = append(keys, k)
		}
		m[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, api.Errorf(http.StatusBadRequest, "Malformed JSON in request body.")
	}
	return m, keys, nil
}

// errNotObject: the body is JSON but not an object (Glance answers such a create with 500;
// glimpse says what is wrong).
var errNotObject = api.Errorf(http.StatusBadRequest, "Request body must be a JSON object.")

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func notFound(id string) *api.APIError {
	return api.Errorf(http.StatusNotFound, "No image found with ID %s", id)
}

var errNotOwner = api.Errorf(http.StatusForbidden, "You do not own this image")

// isOwner reports whether c may change r: an admin, or the owning project.
func isOwner(c Caller, r *record) bool {
	return c.Admin || (c.Project != "" && r.Owner.Valid && r.Owner.String == c.Project)
}

// visible reports whether c may see r: Glance shows an image to admins, to its owner, to
// everyone when public or community, and to the projects it is shared with (whatever the
// membership's status).
func visible(ctx context.Context, q querier, c Caller, r *record) (bool, error) {
	if c.Admin || isOwner(c, r) || r.Visibility == "public" || r.Visibility == "community" {
		return true, nil
	}
	if r.Visibility != "shared" || c.Project == "" {
		return false, nil
	}
	var n int
	err := q.QueryRowContext(ctx, "SELECT count(*) FROM members WHERE image_id = ? AND member = ?", r.ID, c.Project).Scan(&n)
	return n > 0, err
}

// lookup loads an image c may see; errNoImage otherwise.
func (s *Store) lookup(ctx context.Context, q querier, c Caller, id string) (*record, error) {
	r, err := getRecord(ctx, q, id)
	if err != nil {
		return nil, err
	}
	ok, err := visible(ctx, q, c, r)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errNoImage
	}
	return r, nil
}

// inTx runs fn in a write transaction and commits it.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (s *Store) showImage(w http.ResponseWriter, r *http.Request, c Caller) error {
	id := r.PathValue("id")
	rec, err := s.lookup(r.Context(), s.r, c, id)
	if errors.Is(err, errNoImage) {
		return notFound(id)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, rec.toAPI())
}

func (s *Store) createImage(w http.ResponseWriter, r *http.Request, c Caller) error {
	body, keys, err := readJSONObject(r)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if e := api.CheckAttribute(k, true); e != nil {
			return e
		}
	}
	for _, k := range keys {
		if e := checkValue(k, body[k]); e != nil {
			return e
		}
	}
	t := now()
	rec := &record{
		ID: newUUID(), Status: api.StatusQueued, Visibility: "shared",
		CreatedAt: t, UpdatedAt: t, Properties: map[string]string{}, Tags: []string{},
	}
	if c.Project != "" {
		rec.Owner = str(c.Project)
	}
	for _, k := range keys {
		if k == "id" {
			json.Unmarshal(body[k], &rec.ID)
			continue
		}
		if k == "owner" {
			var o *string
			json.Unmarshal(body[k], &o)
			if !c.Admin && (o == nil || *o != c.Project) {
				return api.Errorf(http.StatusForbidden, "You are not permitted to create images owned by '%s'.", api.Str(o))
			}
		}
		if e := setAttribute(rec, k, body[k], c); e != nil {
			return e
		}
	}
	err = s.inTx(r.Context(), func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(r.Context(), "SELECT (SELECT count(*) FROM images WHERE id = ?) + (SELECT count(*) FROM deleted_images WHERE id = ?)", rec.ID, rec.ID).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return api.Errorf(http.StatusConflict, "Image ID %s already exists!", rec.ID)
		}
		return insertRecord(r.Context(), tx, rec)
	})
	if err != nil {
		return err
	}
	s.log.Info("image created", "image", rec.ID, "owner", rec.Owner.String, "user", c.User)
	w.Header().Set("Location", api.BaseURL(r)+"/v2/images/"+rec.ID)
	return writeJSON(w, http.StatusCreated, rec.toAPI())
}

// setAttribute sets one validated attribute of rec from its JSON value, with the policy
// checks Glance makes on the way (publicize_image).
func setAttribute(rec *record, key string, raw json.RawMessage, c Caller) *api.APIError {
	if !coreAttributes[key] {
		var v string
		json.Unmarshal(raw, &v)
		rec.Properties[key] = v
		return nil
	}
	var v any
	json.Unmarshal(raw, &v)
	switch key {
	case "name", "owner", "container_format", "disk_format":
		ns := sql.NullString{}
		if s, ok := v.(string); ok {
			ns = str(s)
		}
		switch key {
		case "name":
			rec.Name = ns
		case "owner":
			rec.Owner = ns
		case "container_format":
			rec.ContainerFormat = ns
		case "disk_format":
			rec.DiskFormat = ns
		}
	case "visibility":
		vis := v.(string)
		if vis == "public" && !c.Admin && rec.Visibility != "public" {
			return api.Errorf(http.StatusForbidden, "You are not authorized to complete publicize_image action.")
		}
		rec.Visibility = vis
	case "protected":
		rec.Protected = v.(bool)
	case "os_hidden":
		rec.OSHidden = v.(bool)
	case "min_ram", "min_disk":
		var n int64
		json.Unmarshal(raw, &n)
		if n < 0 {
			return api.Errorf(http.StatusBadRequest, "Invalid value '%d' for parameter '%s': Cannot be a negative value.", n, key)
		}
		if key == "min_ram" {
			rec.MinRAM = n
		} else {
			rec.MinDisk = n
		}
	case "tags":
		var tags []string
		json.Unmarshal(raw, &tags)
		rec.Tags = rec.Tags[:0]
		for _, t := range tags {
			if !slices.Contains(rec.Tags, t) {
				rec.Tags = append(rec.Tags, t)
			}
		}
	}
	return nil
}

// getAttribute reports whether rec has attribute key (core attributes always do).
func hasAttribute(rec *record, key string) bool {
	if coreAttributes[key] {
		return true
	}
	_, ok := rec.Properties[key]
	return ok
}

func (s *Store) updateImage(w http.ResponseWriter, r *http.Request, c Caller) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxJSONBody+1))
	if err != nil {
		return err
	}
	ops, perr := api.ParsePatch(r.Header.Get("Content-Type"), body)
	if perr != nil {
		return perr
	}
	id := r.PathValue("id")
	var out *record
	err = s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.lookup(r.Context(), tx, c, id)
		if errors.Is(err, errNoImage) {
			return notFound(id)
		}
		if err != nil {
			return err
		}
		if !isOwner(c, rec) {
			return errNotOwner
		}
		for _, op := range ops {
			if e := applyOp(rec, op, c); e != nil {
				return e
			}
		}
		rec.UpdatedAt = now()
		out = rec
		return updateRecord(r.Context(), tx, rec)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out.toAPI())
}

// applyOp applies one patch operation as Glance does.
func applyOp(rec *record, op api.PatchOp, c Caller) *api.APIError {
	key := op.Attribute()
	conflict := func() *api.APIError {
		return &api.APIError{Status: http.StatusConflict, Message: "There was a conflict when trying to complete your request.",
			Detail: fmt.Sprintf("Property %s does not exist.", key)}
	}
	switch op.Op {
	case "remove":
		if coreAttributes[key] {
			return api.Forbidden(fmt.Sprintf("Property %s may not be removed.", key))
		}
		if _, ok := rec.Properties[key]; !ok {
			return conflict()
		}
		delete(rec.Properties, key)
		return nil
	case "replace":
		if !hasAttribute(rec, key) {
			return conflict()
		}
	}
	if e := checkValue(key, op.Value); e != nil {
		return e
	}
	switch key {
	case "owner":
		if !c.Admin {
			return api.Forbidden("Owner can't be updated by non admin.")
		}
	case "disk_format", "container_format":
		if rec.Status != api.StatusQueued {
			var cur sql.NullString
			if key == "disk_format" {
				cur = rec.DiskFormat
			} else {
				cur = rec.ContainerFormat
			}
			var v *string
			json.Unmarshal(op.Value, &v)
			if v == nil || !cur.Valid || *v != cur.String {
				return api.Forbidden(fmt.Sprintf("Attribute %s can be only replaced for a queued image.", key))
			}
		}
	}
	return setAttribute(rec, key, op.Value, c)
}

func (s *Store) deleteImage(w http.ResponseWriter, r *http.Request, c Caller) error {
	id := r.PathValue("id")
	err := s.inTx(r.Context(), func(tx *sql.Tx) error {
		rec, err := s.lookup(r.Context(), tx, c, id)
		if errors.Is(err, errNoImage) {
			return api.Errorf(http.StatusNotFound, "Failed to find image %s to delete", id)
		}
		if err != nil {
			return err
		}
		if !isOwner(c, rec) {
			return errNotOwner
		}
		if rec.Protected {
			return api.Errorf(http.StatusForbidden, "Image %s is protected and cannot be deleted.", id)
		}
		for _, q := range []string{
			"DELETE FROM images WHERE id = ?", "DELETE FROM properties WHERE image_id = ?",
			"DELETE FROM tags WHERE image_id = ?", "DELETE FROM members WHERE image_id = ?",
			"INSERT OR IGNORE INTO deleted_images (id) VALUES (?)",
		} {
			if _, err := tx.ExecContext(r.Context(), q, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The deletion is committed: the data goes now (or at the next start, after a crash).
	if err := os.Remove(s.dataPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Error("removing a deleted image's data", "image", id, "err", err)
	} else {
		syncDir(s.imgDir)
	}
	s.log.Info("image deleted", "image", id, "user", c.User)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
