package convert

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// q2File is the qcow2 writer's output: a temporary file beside the destination that
// Commit renames over it, and that Abort removes (the same pattern as RawFile). Writes go
// through wa, which tests replace to fake a failing disk.
type q2File struct {
	name string // the destination (a symbolic link resolved to its target)
	tmp  string // the temporary file beside it
	f    *os.File
	wa   io.WriterAt
	sync bool
}

// q2Create opens a new temporary file beside name. An existing regular file at name is
// replaced at Commit and keeps its permission bits; a symbolic link is followed; anything
// else at name (a directory, a device) is refused.
func q2Create(name string, sync bool) (*q2File, error) {
	target := name
	perm := fs.FileMode(0o666) // before umask, like os.Create
	if st, err := os.Lstat(name); err == nil {
		if st.Mode()&fs.ModeSymlink != 0 {
			if target, err = filepath.EvalSymlinks(name); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if st, err = os.Stat(target); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: exists and is not a regular file (a qcow2 image must be written to a file)", name)
		}
		perm = st.Mode().Perm()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	dir, base := filepath.Split(target)
	for range 100 {
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		tmp := filepath.Join(dir, "."+base+".glimpse-"+hex.EncodeToString(rnd[:]))
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("creating the output beside %s: %w", name, err)
		}
		if perm != 0o666 {
			if err := f.Chmod(perm); err != nil {
				f.Close()
				os.Remove(tmp)
				return nil, err
			}
		}
		return &q2File{name: target, tmp: tmp, f: f, wa: f, sync: sync}, nil
	}
	return nil, fmt.Errorf("%s: could not pick a temporary name beside it", name)
}

// finish cuts the file to size, optionally flushes it, closes it and renames it into place.
func (o *q2File) finish(size int64) error {
	if err := o.f.Truncate(size); err != nil {
		return writeError(o.name, fmt.Sprintf("setting the size to %d bytes", size), err)
	}
	if o.sync {
		if err := o.f.Sync(); err != nil {
			return writeError(o.name, "flushing", err)
		}
	}
	if err := o.f.Close(); err != nil {
		return writeError(o.name, "closing", err)
	}
	if err := os.Rename(o.tmp, o.name); err != nil {
		return fmt.Errorf("%s: %w", o.name, err)
	}
	if o.sync {
		if d, err := os.Open(filepath.Dir(o.name)); err == nil {
			err = d.Sync()
			d.Close()
			if err != nil {
				return writeError(o.name, "flushing its directory", err)
			}
		}
	}
	return nil
}

// discard closes and removes the temporary file.
func (o *q2File) discard() error {
	o.f.Close() // may already be closed by a failed finish
	if err := os.Remove(o.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
