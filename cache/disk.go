package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Files in the cache directory:
//
//	<key>.data   an image's verified bytes (key: Meta.key, 64 hex digits)
//	<key>.json   its sidecar
//	.tmp-*       a fill or a sidecar being written (removed on open)
//	.lock        held (flock) while a process has the cache open
const (
	dataSuffix = ".data"
	metaSuffix = ".json"
	tmpPrefix  = ".tmp-"
	lockName   = ".lock"
)

func (c *Cache) dataPath(key string) string { return filepath.Join(c.dir, key+dataSuffix) }
func (c *Cache) metaPath(key string) string { return filepath.Join(c.dir, key+metaSuffix) }

// sidecar is the JSON beside each entry's data.
type sidecar struct {
	Meta
	Key         string    `json:"key"`
	CommittedAt time.Time `json:"committed_at"`
	LastAccess  time.Time `json:"last_access"`
	Hits        int64     `json:"hits"`
}

func (e *entry) sidecar() sidecar {
	return sidecar{Meta: e.meta, Key: e.key, CommittedAt: e.committedAt, LastAccess: e.lastAccess, Hits: e.hits}
}

// writeSidecar writes s under its final name through a temporary file (not fsynced: a last
// access update may be lost, never torn).
func (c *Cache) writeSidecar(s sidecar, durable bool) error {
	tmp, err := c.writeTemp(s, durable)
	if err == nil {
		if err = os.Rename(tmp, c.metaPath(s.Key)); err != nil {
			os.Remove(tmp)
		}
	}
	return err
}

// writeTemp writes s to a temporary file and returns its name; with durable it is fsynced.
func (c *Cache) writeTemp(s sidecar, durable bool) (string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(c.dir, tmpPrefix+"meta-*")
	if err != nil {
		return "", err
	}
	_, err = tmp.Write(b)
	if err == nil && durable {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// removeFiles deletes an entry's data and sidecar (readers that have the data open keep
// reading it).
func (c *Cache) removeFiles(key string) {
	for _, p := range []string{c.metaPath(key), c.dataPath(key)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("cache: removing", "file", p, "err", err)
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// recover reads the directory: entries whose sidecar matches their data are kept, the rest
// (temporary files, data without a sidecar, sidecars without data or with a wrong name or
// size) is removed.
func (c *Cache) recover() ([]*entry, error) {
	names, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	var entries []*entry
	keep := map[string]bool{}
	remove := func(name, why string) {
		c.log.Warn("cache: removing on open", "file", name, "why", why)
		if err := os.Remove(filepath.Join(c.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("cache: removing", "file", name, "err", err)
		}
	}
	for _, d := range names {
		name := d.Name()
		key, ok := strings.CutSuffix(name, metaSuffix)
		if !ok || !isHex(key, 32) {
			continue
		}
		e, why := c.checkEntry(key)
		if e == nil {
			remove(name, why)
			remove(key+dataSuffix, why)
			continue
		}
		keep[key] = true
		entries = append(entries, e)
	}
	for _, d := range names {
		name := d.Name()
		switch {
		case name == lockName:
		case strings.HasPrefix(name, tmpPrefix):
			remove(name, "temporary file of an unfinished fill")
		case strings.HasSuffix(name, dataSuffix):
			if key := strings.TrimSuffix(name, dataSuffix); !keep[key] {
				remove(name, "data without a valid sidecar")
			}
		case strings.HasSuffix(name, metaSuffix):
		default:
			c.log.Warn("cache: unknown file left alone", "file", name)
		}
	}
	return entries, nil
}

// checkEntry validates one entry: the sidecar parses, names the key it is stored under,
// holds metadata that can verify data, and the data is a regular file of that size.
func (c *Cache) checkEntry(key string) (*entry, string) {
	b, err := os.ReadFile(c.metaPath(key))
	if err != nil {
		return nil, "sidecar unreadable: " + err.Error()
	}
	var s sidecar
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, "sidecar malformed: " + err.Error()
	}
	if err := s.Validate(); err != nil {
		return nil, err.Error()
	}
	if s.Key != key || s.key() != key {
		return nil, "sidecar is not this entry's"
	}
	st, err := os.Lstat(c.dataPath(key))
	if err != nil {
		return nil, "data missing: " + err.Error()
	}
	if !st.Mode().IsRegular() || st.Size() != s.Size {
		return nil, fmt.Sprintf("data is %d bytes, the sidecar says %d", st.Size(), s.Size)
	}
	return &entry{meta: s.Meta, key: key, committedAt: s.CommittedAt, lastAccess: s.LastAccess, savedAccess: s.LastAccess, hits: s.Hits}, ""
}
