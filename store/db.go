package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite" (pure Go)
)

// schema is the metadata. Images keep Glance's columns; free-form properties, tags and
// members are rows of their own. Deleted image IDs are remembered so that an ID is never
// reused, as Glance (which soft-deletes) refuses them too.
const schema = `
CREATE TABLE IF NOT EXISTS images (
	id TEXT PRIMARY KEY,
	name TEXT,
	status TEXT NOT NULL,
	visibility TEXT NOT NULL,
	protected INTEGER NOT NULL DEFAULT 0,
	os_hidden INTEGER NOT NULL DEFAULT 0,
	owner TEXT,
	checksum TEXT,
	os_hash_algo TEXT,
	os_hash_value TEXT,
	size INTEGER,
	virtual_size INTEGER,
	min_ram INTEGER NOT NULL DEFAULT 0,
	min_disk INTEGER NOT NULL DEFAULT 0,
	disk_format TEXT,
	container_format TEXT,
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_created ON images(created_at, id);
CREATE INDEX IF NOT EXISTS images_owner ON images(owner);
CREATE INDEX IF NOT EXISTS images_status ON images(status);
CREATE INDEX IF NOT EXISTS images_name ON images(name, id);
CREATE TABLE IF NOT EXISTS properties (
	image_id TEXT NOT NULL,
	name TEXT NOT NULL,
	value TEXT NOT NULL,
	PRIMARY KEY (image_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS properties_name ON properties(name, value);
CREATE TABLE IF NOT EXISTS tags (
	image_id TEXT NOT NULL,
	tag TEXT NOT NULL,
	PRIMARY KEY (image_id, tag)
);
CREATE INDEX IF NOT EXISTS tags_tag ON tags(tag);
CREATE TABLE IF NOT EXISTS members (
	image_id TEXT NOT NULL,
	member TEXT NOT NULL,
	status TEXT NOT NULL,
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL,
	PRIMARY KEY (image_id, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_member ON members(member, status);
CREATE TABLE IF NOT EXISTS deleted_images (id TEXT PRIMARY KEY) WITHOUT ROWID;
`

// openDB opens the SQLite database in WAL mode with full synchronisation, so that a
// committed transaction survives a crash of the process and of the machine. It returns a
// writer (one connection: SQLite has one writer at a time, and queueing in Go is kinder than
// "database is locked") and a pool of readers (WAL lets them run beside the writer).
func openDB(dir string) (w, r *sql.DB, err error) {
	path := filepath.Join(dir, "glimpse.db")
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(0)"} {
		q.Add("_pragma", p)
	}
	dsn := "file:" + path + "?" + q.Encode()
	w, err = sql.Open("sqlite", dsn)
	if err != nil {
		return nil, nil, err
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if _, err := w.Exec(schema); err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("%s: creating the schema: %w", path, err)
	}
	var mode string
	if err := w.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || !strings.EqualFold(mode, "wal") {
		w.Close()
		return nil, nil, fmt.Errorf("%s: journal mode is %q, not WAL: %v", path, mode, err)
	}
	r, err = sql.Open("sqlite", dsn)
	if err != nil {
		w.Close()
		return nil, nil, err
	}
	r.SetMaxOpenConns(8)
	return w, r, nil
}

// record is an image row with its properties and tags.
type record struct {
	ID              string
	Name            sql.NullString
	Status          string
	Visibility      string
	Protected       bool
	OSHidden        bool
	Owner           sql.NullString
	Checksum        sql.NullString
	OSHashAlgo      sql.NullString
	OSHashValue     sql.NullString
	Size            sql.NullInt64
	VirtualSize     sql.NullInt64
	MinRAM          int64
	MinDisk         int64
	DiskFormat      sql.NullString
	ContainerFormat sql.NullString
	CreatedAt       string
	UpdatedAt       string
	Properties      map[string]string
	Tags            []string
}

const imageColumns = `id, name, status, visibility, protected, os_hidden, owner, checksum, os_hash_algo,
	os_hash_value, size, virtual_size, min_ram, min_disk, disk_format, container_format, created_at, updated_at`

type scanner interface{ Scan(dest ...any) error }

func scanRecord(s scanner) (*record, error) {
	var r record
	err := s.Scan(&r.ID, &r.Name, &r.Status, &r.Visibility, &r.Protected, &r.OSHidden, &r.Owner,
		&r.Checksum, &r.OSHashAlgo, &r.OSHashValue, &r.Size, &r.VirtualSize, &r.MinRAM, &r.MinDisk,
		&r.DiskFormat, &r.ContainerFormat, &r.CreatedAt, &r.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// querier is what *sql.DB and *sql.Tx share.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

var errNoImage = errors.New("no such image")

// getRecord loads one image with its properties and tags; errNoImage when there is none.
func getRecord(ctx context.Context, q querier, id string) (*record, error) {
	r, err := scanRecord(q.QueryRowContext(ctx, "SELECT "+imageColumns+" FROM images WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoImage
	}
	if err != nil {
		return nil, err
	}
	if err := loadExtras(ctx, q, []*record{r}); err != nil {
		return nil, err
	}
	return r, nil
}

// loadExtras fills the properties and tags of recs.
func loadExtras(ctx context.Context, q querier, recs []*record) error {
	if len(recs) == 0 {
		return nil
	}
	byID := make(map[string]*record, len(recs))
	ids := make([]any, len(recs))
	for i, r := range recs {
		byID[r.ID] = r
		ids[i] = r.ID
		r.Properties = map[string]string{}
		r.Tags = []string{}
	}
	in := "(" + strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",") + ")"
	rows, err := q.QueryContext(ctx, "SELECT image_id, name, value FROM properties WHERE image_id IN "+in, ids...)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id, k, v string
		if err := rows.Scan(&id, &k, &v); err != nil {
			rows.Close()
			return err
		}
		byID[id].Properties[k] = v
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = q.QueryContext(ctx, "SELECT image_id, tag FROM tags WHERE image_id IN "+in+" ORDER BY rowid", ids...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, t string
		if err := rows.Scan(&id, &t); err != nil {
			return err
		}
		byID[id].Tags = append(byID[id].Tags, t)
	}
	return rows.Err()
}

// insertRecord writes a new image with its properties and tags.
func insertRecord(ctx context.Context, tx *sql.Tx, r *record) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO images ("+imageColumns+") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
		r.ID, r.Name, r.Status, r.Visibility, r.Protected, r.OSHidden, r.Owner, r.Checksum, r.OSHashAlgo,
		r.OSHashValue, r.Size, r.VirtualSize, r.MinRAM, r.MinDisk, r.DiskFormat, r.ContainerFormat,
		r.CreatedAt, r.UpdatedAt)
	if err != nil {
		return err
	}
	return writeExtras(ctx, tx, r)
}

// updateRecord writes every mutable attribute of r, its properties and its tags.
func updateRecord(ctx context.Context, tx *sql.Tx, r *record) error {
	_, err := tx.ExecContext(ctx, `UPDATE images SET name=?, status=?, visibility=?, protected=?, os_hidden=?,
		owner=?, checksum=?, os_hash_algo=?, os_hash_value=?, size=?, virtual_size=?, min_ram=?, min_disk=?,
		disk_format=?, container_format=?, updated_at=? WHERE id=?`,
		r.Name, r.Status, r.Visibility, r.Protected, r.OSHidden, r.Owner, r.Checksum, r.OSHashAlgo,
		r.OSHashValue, r.Size, r.VirtualSize, r.MinRAM, r.MinDisk, r.DiskFormat, r.ContainerFormat,
		r.UpdatedAt, r.ID)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM properties WHERE image_id = ?", r.ID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM tags WHERE image_id = ?", r.ID); err != nil {
		return err
	}
	return writeExtras(ctx, tx, r)
}

func writeExtras(ctx context.Context, tx *sql.Tx, r *record) error {
	for k, v := range r.Properties {
		if _, err := tx.ExecContext(ctx, "INSERT INTO properties (image_id, name, value) VALUES (?,?,?)", r.ID, k, v); err != nil {
			return err
		}
	}
	for _, t := range r.Tags {
		if _, err := tx.ExecContext(ctx, "INSERT OR IGNORE INTO tags (image_id, tag) VALUES (?,?)", r.ID, t); err != nil {
			return err
		}
	}
	return nil
}

// now is Glance's timestamp: UTC, to the second.
func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05Z") }
